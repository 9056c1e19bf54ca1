//! What the fuzz targets of the agent share: the structured input (a crafted session with
//! arbitrary edits), the programs under test-run with their checks, and the feedback that lets
//! libFuzzer see into the programs.

pub mod decode;
pub mod feedback;
pub mod programs;
pub mod session;

use mptcp_agent::report::Chain;
use programs::{Programs, Violation};

/// Runs `input` on the programs of this process (loaded on first use), panicking on anything
/// they must not do: libFuzzer then keeps the input as a crash.
pub fn with_programs(input: impl FnOnce(&mut Programs) -> Result<(), Violation>) {
    use std::sync::{Mutex, OnceLock};
    static PROGRAMS: OnceLock<Mutex<Programs>> = OnceLock::new();
    let programs = PROGRAMS.get_or_init(|| match Programs::load() {
        Ok(programs) => Mutex::new(programs),
        Err(error) => panic!("{}", Chain(&error)),
    });
    // A panic while the lock is held ends the process; a poisoned lock is never seen again.
    let mut programs = programs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Err(error) = input(&mut programs).and_then(|()| programs.finish_input()) {
        panic!("{}", Chain(&error));
    }
}
