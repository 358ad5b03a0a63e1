//! The monitor's long-lived half in a binary of its own.
//!
//! A monitor forked from the zygote runs in berth-monitor, a binary that
//! also holds the init (spec parsing, mounts, seccomp, the systemd client).
//! Every text page a process runs is mapped into it in 64 KiB fault-around
//! windows, and those windows stay counted in its RSS for as long as it
//! lives: code the monitor ran once, interleaved with code it never runs.
//! Once it has forked the init, the monitor therefore execs
//! `berth-monitor-loop` (next to its own binary) with the fds it keeps,
//! named on the command line. That binary links only what follows: waiting
//! for the init's Ready, reporting Created to berthd, and the event loop;
//! so the windows it maps hold little else. The exec runs while the init
//! sets the container up, which the monitor only waits for. The pid stays
//! the monitor's, so berthd's record and pidfd stay valid, and the init
//! stays its child.
//!
//! The command line keeps `monitor --id <id> --bundle <dir>`, by which
//! berthd finds its monitors after a crash (`agent/src/reconcile.rs`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::unistd::Pid;

/// The loop binary's file name, next to berth-monitor.
pub const LOOP_BINARY: &str = "berth-monitor-loop";

/// The flags that name an fd, in the order [`Serve::fds`] lists the fds.
const FD_FLAGS: [&str; 12] = [
    "--listener",
    "--report",
    "--start",
    "--sync",
    "--console",
    "--out",
    "--err",
    "--pty",
    "--stdin",
    "--cgroup",
    "--sentinel",
    "--leftovers",
];

/// When the monitor started and forked, for the stages Created reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timing {
    /// CLOCK_MONOTONIC at the monitor's start, ns.
    pub(super) started_ns: u64,
    pub(super) setup_us: u64,
    pub(super) fork_us: u64,
    /// CLOCK_MONOTONIC once the init was forked, ns.
    pub(super) forked_ns: u64,
}

/// What the event loop is handed: the init and the fds the monitor made.
pub(super) struct Serve {
    pub(super) id: String,
    pub(super) bundle: PathBuf,
    pub(super) log: Option<PathBuf>,
    pub(super) child: Pid,
    /// berthd's end of the sync channel, until Created is reported.
    pub(super) sync: Option<std::fs::File>,
    /// A TTY container's end of the socket its init sends the terminal on.
    pub(super) console: Option<OwnedFd>,
    pub(super) timing: Timing,
    pub(super) listener: UnixListener,
    pub(super) out: Option<std::fs::File>,
    pub(super) err: Option<std::fs::File>,
    pub(super) pty: Option<std::fs::File>,
    pub(super) stdin: Option<std::fs::File>,
    pub(super) stdin_once: bool,
    pub(super) report: std::fs::File,
    pub(super) start: std::fs::File,
    /// The container's cgroup2 directory (OOM kills are counted there).
    pub(super) cgroup: Option<OwnedFd>,
    /// The write end of the cgroup sentinel's pipe.
    pub(super) sentinel: Option<OwnedFd>,
    /// The cgroup directory whose processes are killed once the init has
    /// exited: set for a container without a PID namespace of its own.
    pub(super) leftovers: Option<OwnedFd>,
}

impl Serve {
    /// Every fd that crosses the exec, with its flag (in [`FD_FLAGS`]'s order).
    fn fds(&self) -> Vec<(&'static str, RawFd)> {
        let fds: [Option<RawFd>; FD_FLAGS.len()] = [
            Some(self.listener.as_raw_fd()),
            Some(self.report.as_raw_fd()),
            Some(self.start.as_raw_fd()),
            self.sync.as_ref().map(AsRawFd::as_raw_fd),
            self.console.as_ref().map(AsRawFd::as_raw_fd),
            self.out.as_ref().map(AsRawFd::as_raw_fd),
            self.err.as_ref().map(AsRawFd::as_raw_fd),
            self.pty.as_ref().map(AsRawFd::as_raw_fd),
            self.stdin.as_ref().map(AsRawFd::as_raw_fd),
            self.cgroup.as_ref().map(AsRawFd::as_raw_fd),
            self.sentinel.as_ref().map(AsRawFd::as_raw_fd),
            self.leftovers.as_ref().map(AsRawFd::as_raw_fd),
        ];
        FD_FLAGS.into_iter().zip(fds).filter_map(|(flag, fd)| Some((flag, fd?))).collect()
    }

    /// The loop binary's command line.
    fn argv(&self, binary: &Path) -> Vec<String> {
        let mut argv = vec![binary.display().to_string(), "monitor".into(), "--id".into(), self.id.clone()];
        argv.extend(["--bundle".into(), self.bundle.display().to_string(), "--child".into(), self.child.as_raw().to_string()]);
        let t = &self.timing;
        for (flag, n) in
            [("--started-ns", t.started_ns), ("--setup-us", t.setup_us), ("--fork-us", t.fork_us), ("--forked-ns", t.forked_ns)]
        {
            argv.extend([flag.to_string(), n.to_string()]);
        }
        for (flag, fd) in self.fds() {
            argv.extend([flag.to_string(), fd.to_string()]);
        }
        if let Some(log) = &self.log {
            argv.extend(["--log".into(), log.display().to_string()]);
        }
        if self.stdin_once {
            argv.extend(["--stdin-once".into(), "true".into()]);
        }
        argv
    }

    /// Parses what [`Serve::argv`] wrote (after the binary and `monitor`),
    /// and takes ownership of the fds it names.
    fn from_args(args: &[String]) -> Result<Serve, String> {
        let (pairs, rest) = crate::flags::parse(args)?;
        if let Some(extra) = rest.first() {
            return Err(format!("unexpected argument {extra:?}"));
        }
        // Flags are named here as on the command line, dashes included.
        let get = |name: &str| name.strip_prefix("--").and_then(|n| crate::flags::get(&pairs, n));
        // Each fd is taken once: two owners would close it twice.
        let mut named = std::collections::HashSet::new();
        let is_fd = |flag: &str| FD_FLAGS.iter().any(|f| f.strip_prefix("--") == Some(flag));
        if let Some((flag, fd)) = pairs.iter().find(|(flag, fd)| is_fd(flag) && !named.insert(fd.as_str())) {
            return Err(format!("--{flag} {fd} names an fd named before"));
        }
        let need = |name: &str| get(name).ok_or_else(|| format!("{name} is missing"));
        let fd = |name: &str| -> Result<Option<OwnedFd>, String> {
            let Some(v) = get(name) else { return Ok(None) };
            let fd: RawFd = v.parse().map_err(|_| format!("{name} {v:?} is no fd"))?;
            // SAFETY: F_GETFD only reads the flags of the fd number.
            if fd < 3 || fcntl(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, FcntlArg::F_GETFD).is_err() {
                return Err(format!("{name} {fd} is not an open fd above stdio"));
            }
            // SAFETY: the monitor that exec'd this binary made the fd and
            // handed it over on this command line; nothing else here owns it.
            Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
        };
        let file = |name: &str| fd(name).map(|f| f.map(std::fs::File::from));
        let number = |name: &str| -> Result<u64, String> { need(name)?.parse().map_err(|_| format!("{name} is no number")) };
        let child: i32 = need("--child")?.parse().map_err(|_| "--child is no pid".to_string())?;
        let timing = Timing {
            started_ns: number("--started-ns")?,
            setup_us: number("--setup-us")?,
            fork_us: number("--fork-us")?,
            forked_ns: number("--forked-ns")?,
        };
        let required = |name: &str| file(name)?.ok_or_else(|| format!("{name} is missing"));
        Ok(Serve {
            id: need("--id")?.to_string(),
            bundle: PathBuf::from(need("--bundle")?),
            log: get("--log").map(PathBuf::from),
            child: Pid::from_raw(child),
            sync: file("--sync")?,
            console: fd("--console")?,
            timing,
            listener: UnixListener::from(OwnedFd::from(required("--listener")?)),
            out: file("--out")?,
            err: file("--err")?,
            pty: file("--pty")?,
            stdin: file("--stdin")?,
            stdin_once: get("--stdin-once") == Some("true"),
            report: required("--report")?,
            start: required("--start")?,
            cgroup: fd("--cgroup")?,
            sentinel: fd("--sentinel")?,
            leftovers: fd("--leftovers")?,
        })
    }
}

/// Replaces the monitor with the loop binary next to `berth-monitor`; gives
/// `s` back when it cannot (no such binary: the loop runs here).
pub(super) fn exec(s: Serve) -> Serve {
    let Some(binary) = std::env::current_exe().ok().map(|p| p.with_file_name(LOOP_BINARY)) else { return s };
    let Ok(path) = CString::new(binary.as_os_str().as_encoded_bytes()) else { return s };
    let argv: Vec<CString> = s.argv(&binary).into_iter().filter_map(|a| CString::new(a).ok()).collect();
    let fds = s.fds();
    let set_cloexec = |on: bool| {
        for (_, fd) in &fds {
            let flags = if on { FdFlag::FD_CLOEXEC } else { FdFlag::empty() };
            // SAFETY: the fds are owned by `s`, alive for this call.
            let _ = fcntl(unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) }, FcntlArg::F_SETFD(flags));
        }
    };
    set_cloexec(false);
    let e = match nix::unistd::execv(&path, &argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    set_cloexec(true);
    if e != nix::errno::Errno::ENOENT {
        crate::diag::log(
            crate::diag::Level::Warn,
            &format!("cannot exec {} ({e}): the monitor loop runs in berth-monitor", binary.display()),
        );
    }
    s
}

/// `berth-monitor-loop monitor --id … --bundle … --child … <fds>`: the event
/// loop of a monitor that exec'd this binary. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let s = match args.split_first() {
        Some((role, rest)) if role == "monitor" => Serve::from_args(rest),
        _ => Err("the first argument must be `monitor`".to_string()),
    };
    let s = match s {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{LOOP_BINARY}: {e} (started by berth-monitor only)");
            return 2;
        }
    };
    crate::diag::set_context(format!("container_id={}", s.id));
    match super::serve(s) {
        Ok(()) => 0,
        Err(e) => {
            crate::diag::log(crate::diag::Level::Error, &format!("monitor failed: {e}"));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (r.into(), w.into())
    }

    #[test]
    fn the_command_line_hands_over_every_fd_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        let ((report, _report_w), (_start_r, start), (out, _out_w), (_stdin_r, stdin)) = (pipe(), pipe(), pipe(), pipe());
        let ((cgroup, _), (leftovers, _)) = (pipe(), pipe());
        let (sync, _sync_r) = pipe();
        let timing = Timing { started_ns: 1, setup_us: 2, fork_us: 3, forked_ns: u64::MAX };
        let sent = Serve {
            id: "c1".into(),
            bundle: dir.path().to_path_buf(),
            log: Some("/var/log/pods/p/c/0.log".into()),
            child: Pid::from_raw(4242),
            sync: Some(sync),
            console: None,
            timing,
            listener,
            out: Some(out),
            err: None,
            pty: None,
            stdin: Some(stdin),
            stdin_once: true,
            report,
            start,
            cgroup: Some(cgroup.into()),
            sentinel: None,
            leftovers: Some(leftovers.into()),
        };
        let argv = sent.argv(Path::new("/usr/bin/berth-monitor-loop"));
        assert_eq!(argv[..6], ["/usr/bin/berth-monitor-loop", "monitor", "--id", "c1", "--bundle", &dir.path().display().to_string()]);
        let fds = |s: &Serve| s.fds().into_iter().map(|(f, fd)| (f.to_string(), fd)).collect::<Vec<_>>();
        let want = fds(&sent);
        // The parsed Serve owns the same fds now; the sent one must not close them.
        std::mem::forget(sent);
        let got = Serve::from_args(&argv[2..]).unwrap();
        assert_eq!(fds(&got), want);
        assert_eq!(
            want.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
            ["--listener", "--report", "--start", "--sync", "--out", "--stdin", "--cgroup", "--leftovers"]
        );
        assert_eq!(got.timing, timing);
        assert!(want.iter().all(|(f, _)| FD_FLAGS.contains(&f.as_str())), "every fd flag is in FD_FLAGS");
        assert_eq!((got.id.as_str(), got.child.as_raw(), got.stdin_once), ("c1", 4242, true));
        assert_eq!((got.bundle.as_path(), got.log.as_deref()), (dir.path(), Some(Path::new("/var/log/pods/p/c/0.log"))));
        assert!(got.err.is_none() && got.pty.is_none() && got.sentinel.is_none() && got.console.is_none());
    }

    #[test]
    fn a_bad_command_line_is_refused_with_the_flag_named() {
        let err = |args: &[&str]| Serve::from_args(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).err().unwrap();
        assert!(err(&["--id", "c1", "--bundle", "/b"]).contains("--child"));
        assert!(err(&["--id", "c1", "--bundle", "/b", "--child", "7"]).contains("--started-ns"));
        let base =
            ["--id", "c1", "--bundle", "/b", "--child", "7", "--started-ns", "1", "--setup-us", "1", "--fork-us", "1", "--forked-ns", "1"];
        assert!(err(&base).contains("--listener is missing"));
        let mut bad = base;
        bad[9] = "x";
        assert!(err(&bad).contains("--setup-us is no number"));
        // An fd number that is not open in this process is never taken.
        assert!(err(&[&base[..], &["--listener", "100000"]].concat()).contains("not an open fd"));
        assert!(err(&[&base[..], &["--listener", "1"]].concat()).contains("not an open fd"));
        assert!(err(&[&base[..], &["--listener", "5", "--report", "5"]].concat()).contains("--report 5 names an fd named before"));
        assert!(err(&["--id"]).contains("needs a value"));
        assert_eq!(main(&["exec".to_string()]), 2);
    }
}
