//! Errors as log lines show them.

use std::{error::Error, fmt};

/// An error and every cause below it, `: `-separated, as the command line prints them. Error
/// messages here never repeat their cause (it is their `source`), so a log line that printed
/// only the error would lose it.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}
