//! The exit status a monitor records in its container's bundle: written
//! atomically (temp file, fsync, rename) before the monitor goes, so berthd
//! finds it whenever it looks, also after its own restart.

use std::path::Path;

use super::EXIT_FILE;

/// The exit status the monitor records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, or 128 + signal.
    pub code: i32,
    /// The killing signal, 0 if none.
    pub signal: i32,
    /// When the monitor saw it, ns since the epoch.
    pub finished_ns: i64,
    /// The kernel OOM-killed a process of the container's cgroup while it
    /// ran (seen live: under the systemd driver the cgroup is gone soon after
    /// the last process).
    pub oom: bool,
}

impl ExitStatus {
    /// The `exit` file's text.
    pub fn encode(&self) -> String {
        format!("code={}\nsignal={}\nfinished_ns={}\noom={}\n", self.code, self.signal, self.finished_ns, u8::from(self.oom))
    }

    /// Parses the `exit` file's text.
    pub fn decode(text: &str) -> Option<ExitStatus> {
        let mut code = None;
        let mut signal = 0;
        let mut finished_ns = 0;
        let mut oom = false;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("code", v)) => code = v.parse().ok(),
                Some(("signal", v)) => signal = v.parse().unwrap_or(0),
                Some(("finished_ns", v)) => finished_ns = v.parse().unwrap_or(0),
                Some(("oom", v)) => oom = v == "1",
                _ => {}
            }
        }
        Some(ExitStatus { code: code?, signal, finished_ns, oom })
    }

    /// Reads a bundle's exit file, if the container has exited.
    pub fn read(bundle: &Path) -> Option<ExitStatus> {
        std::fs::read_to_string(bundle.join(EXIT_FILE)).ok().and_then(|t| ExitStatus::decode(&t))
    }
}

pub(super) fn write_exit_file(bundle: &Path, status: &ExitStatus) {
    let tmp = bundle.join(".exit.tmp");
    if std::fs::write(&tmp, status.encode()).is_ok() {
        if let Ok(f) = std::fs::File::open(&tmp) {
            let _ = f.sync_all();
        }
        let _ = std::fs::rename(&tmp, bundle.join(EXIT_FILE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_round_trips() {
        let s = ExitStatus { code: 137, signal: 9, finished_ns: 42, oom: true };
        assert_eq!(ExitStatus::decode(&s.encode()), Some(s));
        // Files written before the field existed.
        assert_eq!(ExitStatus::decode("code=0\nsignal=0\nfinished_ns=1\n").map(|s| s.oom), Some(false));
        assert_eq!(ExitStatus::decode("garbage"), None);
    }
}
