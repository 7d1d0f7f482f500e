//! The ferrolb speaker. Today it holds standalone planning (which VIP each
//! configured service gets); announcement and forwarding join it as their
//! issues land.

pub mod plan;
