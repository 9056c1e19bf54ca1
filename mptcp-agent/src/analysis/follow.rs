//! `decode --follow`: a capture file still being written (`tcpdump -w` running), read as it
//! grows. At the end of what is written the reader waits for more; it ends when a writer has
//! closed the file (inotify's IN_CLOSE_WRITE, seen while following) and everything written has
//! been read, or when it is told to stop (SIGINT or SIGTERM).

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// How long one wait for the file to change lasts before the stop flag is looked at again.
const WAIT: Duration = Duration::from_millis(200);

/// A file read as it grows, until its writer closes it or `stop` is set.
pub struct Follow<'a> {
    file: File,
    /// An inotify instance watching the file for writes and closes by a writer.
    inotify: OwnedFd,
    writer_closed: bool,
    stop: &'a AtomicBool,
}

impl<'a> Follow<'a> {
    pub fn open(path: &Path, stop: &'a AtomicBool) -> io::Result<Self> {
        let file = File::open(path)?;
        // SAFETY: inotify_init1 takes flags only; a descriptor it returns is ours to own.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let inotify = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path that outlives the call.
        let watch = unsafe {
            libc::inotify_add_watch(
                inotify.as_raw_fd(),
                name.as_ptr(),
                libc::IN_MODIFY | libc::IN_CLOSE_WRITE,
            )
        };
        if watch < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { file, inotify, writer_closed: false, stop })
    }

    /// Waits up to `WAIT` for the file to change; notes a writer's close.
    fn wait(&mut self) -> io::Result<()> {
        let mut poll = libc::pollfd { fd: self.inotify.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let timeout = i32::try_from(WAIT.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            // A signal (the one that stops us, usually) ends the wait early.
            return if error.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(error) };
        }
        let mut events = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer of the length given.
            let read =
                unsafe { libc::read(self.inotify.as_raw_fd(), events.as_mut_ptr().cast(), events.len()) };
            if read <= 0 {
                // Nothing more queued (EAGAIN on the non-blocking descriptor) or an error that
                // the next wait meets again: the file itself is read either way.
                return Ok(());
            }
            let mut rest = events.get(..read as usize).unwrap_or_default();
            // struct inotify_event: wd (4), mask (4), cookie (4), len (4), then len name bytes.
            while let Some(header) = rest.get(..16) {
                let field = |at: usize| {
                    u32::from_ne_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
                };
                if field(4) & libc::IN_CLOSE_WRITE != 0 {
                    self.writer_closed = true;
                }
                rest = rest.get(16 + field(12) as usize..).unwrap_or_default();
            }
        }
    }
}

impl Read for Follow<'_> {
    /// What the file has; at its end, waits for more. 0 (the end) once a writer has closed it
    /// and all is read, or once stopped.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // A close seen before this read: what it finds is all there is.
            let closed = self.writer_closed;
            let read = self.file.read(buf)?;
            if read > 0 || buf.is_empty() || closed || self.stop.load(Ordering::Relaxed) {
                return Ok(read);
            }
            self.wait()?;
        }
    }
}

/// Set by SIGINT and SIGTERM once `stop_on_signals` has run.
pub static STOPPED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_stop(_signal: libc::c_int) {
    STOPPED.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM set `STOPPED` instead of ending the process, so that what was read is
/// still reported.
pub fn stop_on_signals() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
        // async-signal-safe; no SA_RESTART, so a wait in poll is cut short.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// Bytes appended while following are read; the end comes once the writer closes the file.
    #[test]
    fn a_growing_file_is_read_until_its_writer_closes_it() {
        // Removed with the directory, even when the test fails.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture");
        let mut writer = File::create(&path).unwrap();
        writer.write_all(b"first ").unwrap();
        let stop = AtomicBool::new(false);
        let mut follow = Follow::open(&path, &stop).unwrap();
        let appender = std::thread::spawn(move || {
            for part in [&b"second "[..], b"third"] {
                std::thread::sleep(Duration::from_millis(300));
                writer.write_all(part).unwrap();
            }
            drop(writer);
        });
        let mut read = String::new();
        follow.read_to_string(&mut read).unwrap();
        appender.join().unwrap();
        assert_eq!(read, "first second third");
    }

    /// Stopped, the reader ends at what has been written.
    #[test]
    fn a_stopped_follow_ends_at_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture");
        let mut writer = File::create(&path).unwrap();
        writer.write_all(b"only this").unwrap();
        let stop = AtomicBool::new(false);
        let mut follow = Follow::open(&path, &stop).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(follow.read(&mut buf).unwrap(), 9);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(follow.read(&mut buf).unwrap(), 0, "the writer is still open, but we were stopped");
    }
}
