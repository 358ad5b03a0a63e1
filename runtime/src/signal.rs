//! Linux's signal numbers, the realtime ones included: nix's `Signal` names
//! none of those, yet an image's STOPSIGNAL (systemd's SIGRTMIN+3) or
//! kubelet's stop signal may ask for one.

/// The kernel's first realtime signal. glibc's SIGRTMIN reads the same: it
/// keeps 32 and 33 for itself.
pub const RTMIN: i32 = 34;

/// The kernel's last signal, the last realtime one.
pub const RTMAX: i32 = 64;

/// Every signal number kill(2) sends.
pub const ALL: std::ops::RangeInclusive<i32> = 1..=RTMAX;
