//! The converter's report: what became of every field it met, per object.

use std::fmt;

/// What became of one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried over as it is.
    Mapped(String),
    /// Carried over, changed: to where, and how.
    Converted(String, String),
    /// Not carried over, and why (with what to do instead).
    Dropped(String),
    /// Not a field the converter knows: not carried over.
    Unknown,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `Kind namespace/name` of the object the field is in.
    pub object: String,
    /// The field's path in it.
    pub field: String,
    /// What became of it.
    pub outcome: Outcome,
}

/// Every note, in the order met.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The notes.
    pub notes: Vec<Note>,
}

impl Report {
    /// Adds a note.
    pub fn note(&mut self, object: &str, field: &str, outcome: Outcome) {
        self.notes.push(Note {
            object: object.to_string(),
            field: field.to_string(),
            outcome,
        });
    }

    /// Notes of fields not carried over (dropped or unknown).
    pub fn lost(&self) -> impl Iterator<Item = &Note> {
        self.notes
            .iter()
            .filter(|n| matches!(n.outcome, Outcome::Dropped(_) | Outcome::Unknown))
    }

    /// (mapped, converted, dropped, unknown) counts.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for n in &self.notes {
            match n.outcome {
                Outcome::Mapped(_) => c.0 += 1,
                Outcome::Converted(..) => c.1 += 1,
                Outcome::Dropped(_) => c.2 += 1,
                Outcome::Unknown => c.3 += 1,
            }
        }
        c
    }
}

impl fmt::Display for Report {
    /// Grouped by object, one line per field.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Objects in the order first met, each with all of its notes.
        let mut objects: Vec<&str> = Vec::new();
        for n in &self.notes {
            if !objects.contains(&n.object.as_str()) {
                objects.push(&n.object);
            }
        }
        for o in objects {
            writeln!(f, "{o}")?;
            for n in self.notes.iter().filter(|n| n.object == o) {
                match &n.outcome {
                    Outcome::Mapped(to) => writeln!(f, "  mapped     {} -> {to}", n.field)?,
                    Outcome::Converted(to, how) => {
                        writeln!(f, "  converted  {} -> {to}: {how}", n.field)?
                    }
                    Outcome::Dropped(why) => writeln!(f, "  DROPPED    {}: {why}", n.field)?,
                    Outcome::Unknown => writeln!(
                        f,
                        "  UNKNOWN    {}: not a field this converter knows (a newer MetalLB?); not carried over, check it by hand",
                        n.field
                    )?,
                }
            }
        }
        let (m, c, d, u) = self.counts();
        write!(
            f,
            "{m} fields mapped, {c} converted, {d} dropped, {u} unknown"
        )
    }
}
