//! A pseudo-terminal of a given size driven like an operator's: a tmux server of its own
//! (`tmux -L NAME`) running one command, keys sent to it and the screen read back; the server is
//! killed on drop.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::netns::{run_stdout, unique_name};

pub struct Tmux {
    socket: String,
    /// The server's socket file, which `kill-server` leaves behind.
    socket_path: Option<std::path::PathBuf>,
}

impl Tmux {
    /// Starts `command` (run by `sh -c`) in a detached `width`x`height` session.
    pub fn start(width: u16, height: u16, command: &str) -> Result<Self> {
        let mut tmux = Self { socket: unique_name("tmux"), socket_path: None };
        let (width, height) = (width.to_string(), height.to_string());
        run_stdout(tmux.cmd().args(["new-session", "-d", "-x", &width, "-y", &height, command]))?;
        tmux.socket_path = Some(tmux.format("#{socket_path}")?.into());
        Ok(tmux)
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        // No user configuration: the same keys and screen everywhere.
        cmd.args(["-f", "/dev/null", "-L", &self.socket]);
        cmd
    }

    /// Sends keys as `tmux send-keys` names them (`q`, `Escape`, `Down`, `C-c`, ...); `literal`
    /// sends the text as typed.
    pub fn keys(&self, keys: &[&str]) -> Result<()> {
        run_stdout(self.cmd().arg("send-keys").args(keys))?;
        Ok(())
    }

    pub fn type_text(&self, text: &str) -> Result<()> {
        run_stdout(self.cmd().args(["send-keys", "-l", text]))?;
        Ok(())
    }

    /// The visible screen, one line per row.
    pub fn screen(&self) -> Result<String> {
        run_stdout(self.cmd().args(["capture-pane", "-p"]))
    }

    /// A tmux format of the pane (`#{alternate_on}`, `#{cursor_flag}`, ...).
    pub fn format(&self, format: &str) -> Result<String> {
        Ok(run_stdout(self.cmd().args(["display-message", "-p", format]))?.trim().to_owned())
    }

    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        run_stdout(self.cmd().args(["resize-window", "-x", &width.to_string(), "-y", &height.to_string()]))?;
        Ok(())
    }

    /// Polls the screen every 50 ms until `done` accepts it, `timeout` at most.
    pub fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen()?;
            if done(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                bail!("the screen never showed {what} within {timeout:?}:\n{screen}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}
