//! The watchdog: a kernel timer that resets this node when the agent stops sending keepalives while it
//! leads (Patroni's `watchdog` section; reference patroni.md section 6).
//!
//! Why it exists: a leader whose agent is frozen (SIGSTOP, swapped out, a paused VM) or killed -9
//! stops renewing the leader lock but cannot demote its PostgreSQL; after `ttl` another member
//! promotes, and the old primary still accepts direct writes. Armed with a timeout of
//! `ttl - safety_margin` seconds and fed after every successful renewal, the watchdog resets the node
//! `safety_margin` seconds before the lock can expire: by the time another member may promote, the
//! old primary is gone.
//!
//! The pieces:
//! - [`WatchdogDevice`]: one open device (set the timeout, keepalive, disarm with the magic close).
//! - [`LinuxWatchdog`]: the device on Linux's `/dev/watchdog` ioctl interface (`WDIOC_GETSUPPORT`,
//!   `WDIOC_SETTIMEOUT`, `WDIOC_GETTIMEOUT`, `WDIOC_KEEPALIVE`, the magic close `'V'`).
//! - [`Watchdog`]: what the HA loop holds. It applies `watchdog.mode` (`off`, `automatic`,
//!   `required`), computes the timeout, checks what the driver accepted, and logs a refusal once
//!   rather than every cycle.
//! - [`DeviceDouble`]: a device for tests that records every call and plays odd drivers.
//!
//! # How the loop calls it
//! All durations are whole seconds: `ttl` and `loop_wait` from the dynamic configuration (the DCS
//! `config` key), `safety_margin` from the local `watchdog` section. Every call is one or two
//! syscalls on a character device (microseconds): call them inline from the loop, no
//! `spawn_blocking`.
//!
//! | when | call |
//! |---|---|
//! | `Action::ArmWatchdog`, which `decide` puts right before taking the lock (`AcquireLeader`, also the first lock after bootstrap) and before renewing it while not armed (the agent restarted while leader, or `automatic` found no device last time), also while paused (unlike Patroni: a lease renewed without the watchdog during a pause outlives the resume) | `wd.may_take_lock(ttl, loop_wait)`: this arms the device; `false` (only in `required` mode) ends the decision and is `WatchdogState::Refused` for the next one, where a leader steps down as Patroni's "Demoting self because watchdog could not be activated" |
//! | right after a successful acquire or renewal of the lock (`AcquireLeader`/`RenewLeader` returned true) | `wd.keepalive()` (log an `Err`) |
//! | when failsafe mode keeps the primary running without the DCS | `wd.keepalive()` |
//! | after PostgreSQL stopped (`Action::Stop` returned Ok: demotion, DCS loss, switchover) | `wd.disable()` |
//! | end of a cycle in which this member neither holds the lock nor runs PostgreSQL as a primary (lost race, released lock, replica) | `wd.disable()` (no syscall when not active) |
//! | `ttl` or `loop_wait` changed while `wd.is_active()` | `wd.activate(ttl, loop_wait)` (log an `Err`), before the lease TTL changes |
//! | clean shutdown, after PostgreSQL stopped | `wd.disable()`; if the stop failed, leave it armed |
//! | the REST API's `/patroni` | `watchdog_failed: true` when `!wd.is_healthy(ttl, loop_wait)` |
//!
//! Do not disable the watchdog because a renewal failed: a leader that lost the lock with PostgreSQL
//! still primary is exactly the case the watchdog is for. It stays armed without keepalives until
//! PostgreSQL is stopped (then `disable`), or the node is reset.
//!
//! Dropping an armed [`Watchdog`] (or [`LinuxWatchdog`]) closes the device without the magic
//! character: the kernel keeps counting and resets the node when the timeout expires, as when the
//! agent dies. Only [`Watchdog::disable`] disarms.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use praetor_config::{Watchdog as WatchdogConfig, WatchdogMode};

/// One open watchdog device. While it is open the kernel counts down; a keepalive restarts the
/// count, and only [`disarm_and_close`](WatchdogDevice::disarm_and_close) stops it. Dropping the
/// device without it leaves the timer running (the node resets when it expires).
pub trait WatchdogDevice: Send {
    /// Sets the timeout to `timeout_secs` seconds and returns the timeout in effect afterwards, in
    /// seconds: drivers round to their granularity or clamp to their range, and some cannot change
    /// it at all (then this is the fixed timeout).
    fn set_timeout(&mut self, timeout_secs: u32) -> Result<u32, WatchdogError>;

    /// Restarts the countdown.
    fn keepalive(&mut self) -> Result<(), WatchdogError>;

    /// The magic close: writes `'V'` then closes, which stops the timer unless the driver was loaded
    /// with `nowayout`. On error the device may still be armed.
    fn disarm_and_close(self: Box<Self>) -> Result<(), WatchdogError>;

    /// Whether closing stops the timer (`false` when the driver runs with `nowayout`).
    fn can_be_disabled(&self) -> bool {
        true
    }

    /// A name for logs: `Software Watchdog at /dev/watchdog`.
    fn describe(&self) -> String;
}

/// Opens the device at a path: [`LinuxWatchdog::open`] in production, a [`DeviceDouble`] in tests.
pub type OpenDevice =
    Box<dyn FnMut(&Path) -> Result<Box<dyn WatchdogDevice>, WatchdogError> + Send>;

/// Why the watchdog cannot protect this leader. Every variant names the device path.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The device could not be opened (missing driver, permissions, already open elsewhere).
    #[error("cannot open watchdog device {}: {source}{}", path.display(), open_hint(source))]
    Open {
        /// The device.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The path is not a watchdog device.
    #[error("{} is not a watchdog device: {reason}", path.display())]
    NotAWatchdog {
        /// The path.
        path: PathBuf,
        /// What showed it.
        reason: String,
    },
    /// An operation on the open device failed.
    #[error("watchdog device {}: {operation} failed: {source}", path.display())]
    Device {
        /// The device.
        path: PathBuf,
        /// `WDIOC_SETTIMEOUT`, `keepalive`, `magic close`, ...
        operation: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// This platform has no supported watchdog interface.
    #[error("watchdog device {}: watchdogs are supported on Linux only", path.display())]
    Unsupported {
        /// The configured device.
        path: PathBuf,
    },
    /// `ttl - safety_margin` leaves no timeout.
    #[error(
        "watchdog {}: ttl {ttl_secs} s minus watchdog.safety_margin {safety_margin} s leaves no \
         watchdog timeout; lower watchdog.safety_margin or raise ttl",
        path.display()
    )]
    NoTimeout {
        /// The configured device.
        path: PathBuf,
        /// `ttl`.
        ttl_secs: u32,
        /// `watchdog.safety_margin` (-1: ttl/2).
        safety_margin: i64,
    },
    /// The timeout would not outlast one loop: a healthy leader would be reset between two
    /// keepalives.
    #[error(
        "watchdog {}: timeout {timeout_secs} s (ttl - safety_margin) must be longer than loop_wait \
         {loop_wait_secs} s, or a healthy leader is reset between two keepalives; lower \
         watchdog.safety_margin or loop_wait",
        path.display()
    )]
    LoopWaitTooLong {
        /// The configured device.
        path: PathBuf,
        /// `ttl - safety_margin`.
        timeout_secs: u32,
        /// `loop_wait`.
        loop_wait_secs: u32,
    },
    /// The driver runs with a timeout not longer than `loop_wait` (it ignored the one asked):
    /// disarmed again, it would reset a healthy leader.
    #[error(
        "watchdog device {}: the driver runs with a {accepted_secs} s timeout, not longer than \
         loop_wait {loop_wait_secs} s; disarmed, it would reset a healthy leader",
        path.display()
    )]
    TimeoutTooShort {
        /// The device.
        path: PathBuf,
        /// The timeout in effect.
        accepted_secs: u32,
        /// `loop_wait`.
        loop_wait_secs: u32,
    },
    /// The driver cannot honour `ttl - safety_margin`: its timeout is longer, so a frozen agent's
    /// node would be reset only after its leader lock expired.
    #[error(
        "watchdog device {} cannot honour a {wanted_secs} s timeout (ttl - safety_margin): the \
         driver uses {accepted_secs} s, so a frozen agent's node would be reset only after its \
         leader lock expired",
        path.display()
    )]
    TimeoutTooLong {
        /// The device.
        path: PathBuf,
        /// `ttl - safety_margin`.
        wanted_secs: u32,
        /// The timeout in effect.
        accepted_secs: u32,
    },
}

impl WatchdogError {
    /// The device path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            WatchdogError::Open { path, .. }
            | WatchdogError::NotAWatchdog { path, .. }
            | WatchdogError::Device { path, .. }
            | WatchdogError::Unsupported { path }
            | WatchdogError::NoTimeout { path, .. }
            | WatchdogError::LoopWaitTooLong { path, .. }
            | WatchdogError::TimeoutTooShort { path, .. }
            | WatchdogError::TimeoutTooLong { path, .. } => path,
        }
    }
}

/// What an operator does about an open error.
fn open_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => {
            " (no watchdog driver loaded? `modprobe softdog`, see the README section Watchdog)"
        }
        io::ErrorKind::PermissionDenied => {
            " (the agent's user needs write access to the device: see the README section Watchdog)"
        }
        _ if e.raw_os_error() == Some(nix::libc::EBUSY) => {
            " (another process holds it open: a watchdog daemon, systemd's RuntimeWatchdogSec, or \
             another agent)"
        }
        _ => "",
    }
}

/// The watchdog as the HA loop sees it: [`WatchdogMode`] applied to one device, opened on
/// [`activate`](Watchdog::activate) and disarmed on [`disable`](Watchdog::disable). See the module
/// docs for where the loop calls what.
pub struct Watchdog {
    config: WatchdogConfig,
    open: OpenDevice,
    device: Option<Box<dyn WatchdogDevice>>,
    /// While a device is open: the timeout asked of it and the one it accepted, in seconds.
    timeout: Option<(u32, u32)>,
    /// The last refusal or warning logged by `may_take_lock`, to log each once.
    last_complaint: Option<String>,
}

impl fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watchdog")
            .field("config", &self.config)
            .field("device", &self.device.as_ref().map(|d| d.describe()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Watchdog {
    /// The watchdog of `watchdog` (the local configuration section), on the Linux device it names.
    /// Nothing is opened before [`activate`](Watchdog::activate).
    pub fn new(config: &WatchdogConfig) -> Watchdog {
        Watchdog::with_opener(config, Box::new(open_platform_device))
    }

    /// The same with another way to open the device (tests: [`DeviceDouble::opener`]).
    pub fn with_opener(config: &WatchdogConfig, open: OpenDevice) -> Watchdog {
        Watchdog {
            config: config.clone(),
            open,
            device: None,
            timeout: None,
            last_complaint: None,
        }
    }

    /// `watchdog.mode`.
    pub fn mode(&self) -> WatchdogMode {
        self.config.mode
    }

    /// `watchdog.device`.
    pub fn device_path(&self) -> &Path {
        &self.config.device
    }

    /// Whether a device is open and armed (keepalives are being counted on).
    pub fn is_active(&self) -> bool {
        self.device.is_some()
    }

    /// The timeout the armed device runs with, in seconds; `None` when not active.
    pub fn timeout_secs(&self) -> Option<u32> {
        self.device.as_ref().and(self.timeout).map(|(_, t)| t)
    }

    /// Arms the watchdog for a leader lock of `ttl_secs`, with keepalives every `loop_wait_secs`:
    /// opens the device unless open, sets its timeout to `ttl - safety_margin` (or `ttl / 2` with
    /// `safety_margin: -1`), and checks what the driver accepted. Calling it again while active
    /// changes nothing unless `ttl`/`loop_wait` changed, then sets the new timeout on the open device.
    ///
    /// `Ok` in `off` mode (nothing is opened) and when the device runs with a timeout in
    /// `(loop_wait, ttl - safety_margin]`. `Err` otherwise, whatever the mode; [`may_take_lock`]
    /// applies the mode. After an `Err` the device is closed with the magic close, except for
    /// [`WatchdogError::TimeoutTooLong`] in `automatic` mode (a later reset beats none: it stays
    /// armed, see [`is_active`](Watchdog::is_active)) and a failed timeout change on a device that
    /// was already armed (it keeps its previous timeout).
    ///
    /// [`may_take_lock`]: Watchdog::may_take_lock
    pub fn activate(&mut self, ttl_secs: u32, loop_wait_secs: u32) -> Result<(), WatchdogError> {
        if self.config.mode == WatchdogMode::Off {
            return Ok(());
        }
        let path = self.config.device.clone();
        let Some(wanted) = self.config.timeout_secs(ttl_secs) else {
            self.close_quietly();
            return Err(WatchdogError::NoTimeout {
                path,
                ttl_secs,
                safety_margin: self.config.safety_margin,
            });
        };
        if wanted <= loop_wait_secs {
            self.close_quietly();
            return Err(WatchdogError::LoopWaitTooLong {
                path,
                timeout_secs: wanted,
                loop_wait_secs,
            });
        }
        if let (Some(_), Some((asked, accepted))) = (&self.device, self.timeout) {
            if asked == wanted {
                return self.judge(wanted, accepted, loop_wait_secs);
            }
        }
        let fresh = self.device.is_none();
        let device = match self.device.take() {
            Some(d) => d,
            None => (self.open)(&path)?,
        };
        let device = self.device.insert(device);
        let accepted = match device.set_timeout(wanted) {
            Ok(a) => a,
            Err(e) => {
                if fresh {
                    self.close_quietly();
                }
                return Err(e);
            }
        };
        self.timeout = Some((wanted, accepted));
        self.judge(wanted, accepted, loop_wait_secs)?;
        if let Some(d) = &self.device {
            tracing::info!(
                "{} activated with {accepted} second timeout, timing slack {} seconds",
                d.describe(),
                accepted - loop_wait_secs
            );
            if !d.can_be_disabled() {
                tracing::warn!(
                    "{} cannot be disabled (nowayout): it will reset the node after this member \
                     stops leading",
                    d.describe()
                );
            }
        }
        Ok(())
    }

    /// Checks the timeout a device accepted against the one wanted and `loop_wait`; closes the
    /// device when it must not stay armed.
    fn judge(
        &mut self,
        wanted_secs: u32,
        accepted_secs: u32,
        loop_wait_secs: u32,
    ) -> Result<(), WatchdogError> {
        let path = self.config.device.clone();
        if accepted_secs <= loop_wait_secs {
            self.close_quietly();
            return Err(WatchdogError::TimeoutTooShort {
                path,
                accepted_secs,
                loop_wait_secs,
            });
        }
        if accepted_secs > wanted_secs {
            if self.config.mode == WatchdogMode::Required {
                self.close_quietly();
            }
            return Err(WatchdogError::TimeoutTooLong {
                path,
                wanted_secs,
                accepted_secs,
            });
        }
        Ok(())
    }

    /// Whether this member may take the leader lock now, with the watchdog armed as the mode asks:
    /// calls [`activate`](Watchdog::activate), and on an error logs it (once, until it changes) and
    /// answers `false` in `required` mode (the device closed), `true` in `automatic` mode. Always
    /// `true` in `off` mode. Call it right before each attempt to take the lock (also while
    /// paused).
    pub fn may_take_lock(&mut self, ttl_secs: u32, loop_wait_secs: u32) -> bool {
        let (allowed, complaint) = match self.activate(ttl_secs, loop_wait_secs) {
            Ok(()) => (true, None),
            Err(e) if self.config.mode == WatchdogMode::Required => {
                self.close_quietly();
                (
                    false,
                    Some(format!(
                        "{e}; not taking the leader lock (watchdog.mode: required)"
                    )),
                )
            }
            Err(e) => {
                let how = if self.is_active() {
                    "with the watchdog as the driver set it"
                } else {
                    "without a watchdog"
                };
                (
                    true,
                    Some(format!("{e}; leading {how} (watchdog.mode: automatic)")),
                )
            }
        };
        if complaint != self.last_complaint {
            if let Some(c) = &complaint {
                if allowed {
                    tracing::warn!("{c}");
                } else {
                    tracing::error!("{c}");
                }
            }
            self.last_complaint = complaint;
        }
        allowed
    }

    /// Restarts the countdown of the armed device; nothing when not active. Call it right after
    /// each successful lock renewal. An `Err` is worth a log line only: the device stays armed, so
    /// if keepalives keep failing the node resets as if the agent were frozen.
    pub fn keepalive(&mut self) -> Result<(), WatchdogError> {
        match self.device.as_mut() {
            Some(d) => d.keepalive(),
            None => Ok(()),
        }
    }

    /// Disarms and closes the device with the magic close; nothing when not active. Call it once
    /// PostgreSQL no longer runs as a primary of this member's (after a stop, when not leading).
    /// With a `nowayout` driver the timer cannot be stopped: a last keepalive gives the operator the
    /// full timeout, and a warning says when the node resets. An `Err` means the device may still
    /// be armed.
    pub fn disable(&mut self) -> Result<(), WatchdogError> {
        let Some(mut device) = self.device.take() else {
            return Ok(());
        };
        let timeout = self.timeout.take().map(|(_, t)| t);
        if !device.can_be_disabled() {
            let _ = device.keepalive();
            tracing::warn!(
                "{} cannot be disabled (nowayout): the node resets in {} seconds",
                device.describe(),
                timeout.map_or_else(|| "?".to_string(), |t| t.to_string())
            );
        }
        let what = device.describe();
        device.disarm_and_close()?;
        tracing::info!("{what} disabled");
        Ok(())
    }

    /// Patroni's `is_healthy`: `false` only in `required` mode when this member could not arm the
    /// watchdog if it had to lead (the timeout would not outlast `loop_wait`, or the device is
    /// neither armed nor writable). The REST API reports it as `watchdog_failed`, and such a member
    /// is not a failover candidate.
    pub fn is_healthy(&self, ttl_secs: u32, loop_wait_secs: u32) -> bool {
        if self.config.mode != WatchdogMode::Required {
            return true;
        }
        let timing_ok = self
            .config
            .timeout_secs(ttl_secs)
            .is_some_and(|t| t > loop_wait_secs);
        timing_ok
            && (self.is_active()
                || nix::unistd::access(&self.config.device, nix::unistd::AccessFlags::W_OK).is_ok())
    }

    /// Closes the device with the magic close, logging a failure.
    fn close_quietly(&mut self) {
        self.timeout = None;
        if let Some(d) = self.device.take() {
            if let Err(e) = d.disarm_and_close() {
                tracing::warn!("{e}");
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(d) = &self.device {
            tracing::warn!(
                "{} is left armed: the node resets in {} seconds unless the agent restarts and \
                 disables it",
                d.describe(),
                self.timeout
                    .map_or_else(|| "?".to_string(), |(_, t)| t.to_string())
            );
        }
    }
}

#[cfg(target_os = "linux")]
fn open_platform_device(path: &Path) -> Result<Box<dyn WatchdogDevice>, WatchdogError> {
    LinuxWatchdog::open(path).map(|d| Box::new(d) as Box<dyn WatchdogDevice>)
}

#[cfg(not(target_os = "linux"))]
fn open_platform_device(path: &Path) -> Result<Box<dyn WatchdogDevice>, WatchdogError> {
    Err(WatchdogError::Unsupported {
        path: path.to_path_buf(),
    })
}

#[cfg(target_os = "linux")]
pub use linux::LinuxWatchdog;

/// Linux's watchdog interface (`include/uapi/linux/watchdog.h`, Documentation/watchdog/watchdog-api).
#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::io::{self, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::{Path, PathBuf};

    use nix::errno::Errno;
    use nix::libc::c_int;
    use nix::sys::ioctl::ioctl_num_type;

    use super::{WatchdogDevice, WatchdogError};

    /// `struct watchdog_info`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub(super) struct WatchdogInfo {
        pub(super) options: u32,
        pub(super) firmware_version: u32,
        pub(super) identity: [u8; 32],
    }

    /// The driver can change its timeout.
    pub(super) const WDIOF_SETTIMEOUT: u32 = 0x0080;
    /// The driver stops only on the magic close.
    pub(super) const WDIOF_MAGICCLOSE: u32 = 0x0100;
    /// The driver answers `WDIOC_KEEPALIVE`.
    pub(super) const WDIOF_KEEPALIVEPING: u32 = 0x8000;

    pub(super) const WDIOC_GETSUPPORT: ioctl_num_type =
        nix::request_code_read!(b'W', 0, std::mem::size_of::<WatchdogInfo>());
    pub(super) const WDIOC_KEEPALIVE: ioctl_num_type =
        nix::request_code_read!(b'W', 5, std::mem::size_of::<c_int>());
    pub(super) const WDIOC_SETTIMEOUT: ioctl_num_type =
        nix::request_code_readwrite!(b'W', 6, std::mem::size_of::<c_int>());
    pub(super) const WDIOC_GETTIMEOUT: ioctl_num_type =
        nix::request_code_read!(b'W', 7, std::mem::size_of::<c_int>());

    nix::ioctl_read_bad!(wdioc_getsupport, WDIOC_GETSUPPORT, WatchdogInfo);
    nix::ioctl_read_bad!(wdioc_keepalive, WDIOC_KEEPALIVE, c_int);
    nix::ioctl_readwrite_bad!(wdioc_settimeout, WDIOC_SETTIMEOUT, c_int);
    nix::ioctl_read_bad!(wdioc_gettimeout, WDIOC_GETTIMEOUT, c_int);

    /// The legacy `/dev/watchdog` (misc 10:130) is always the first watchdog, `watchdog0`.
    const LEGACY_DEVICE: (u64, u64) = (10, 130);

    /// `/dev/watchdog` or `/dev/watchdogN`, open and therefore armed. Opened write-only and
    /// close-on-exec: PostgreSQL and callbacks started by the agent must not inherit it, or the
    /// magic close would not be the last close and the timer would keep running.
    #[derive(Debug)]
    pub struct LinuxWatchdog {
        path: PathBuf,
        file: File,
        info: WatchdogInfo,
        /// From sysfs, when readable.
        nowayout: Option<bool>,
    }

    impl LinuxWatchdog {
        /// Opens the device, which starts the kernel's timer with the driver's current timeout
        /// (softdog: 60 s by default) until [`WatchdogDevice::set_timeout`] changes it. Refuses,
        /// without arming anything, a path that is not a character device, and a character device
        /// that does not answer `WDIOC_GETSUPPORT`.
        pub fn open(path: &Path) -> Result<LinuxWatchdog, WatchdogError> {
            let open_error = |source| WatchdogError::Open {
                path: path.to_path_buf(),
                source,
            };
            // Checked before opening: opening a watchdog arms it, and nothing may fail between
            // that and a magic close.
            let meta = std::fs::metadata(path).map_err(open_error)?;
            if !meta.file_type().is_char_device() {
                return Err(WatchdogError::NotAWatchdog {
                    path: path.to_path_buf(),
                    reason: "not a character device".into(),
                });
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(open_error)?;
            let mut info = WatchdogInfo {
                options: 0,
                firmware_version: 0,
                identity: [0; 32],
            };
            // SAFETY: `info` is a `struct watchdog_info` the kernel fills; the fd is open.
            if let Err(errno) = unsafe { wdioc_getsupport(file.as_raw_fd(), &mut info) } {
                if errno != Errno::ENOTTY && errno != Errno::EINVAL {
                    // Perhaps a watchdog that cannot describe itself: do not leave it armed.
                    let _ = (&file).write_all(b"V");
                }
                return Err(WatchdogError::NotAWatchdog {
                    path: path.to_path_buf(),
                    reason: format!("WDIOC_GETSUPPORT: {}", io::Error::from(errno)),
                });
            }
            let rdev = meta.rdev();
            let id = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
            Ok(LinuxWatchdog {
                path: path.to_path_buf(),
                file,
                info,
                nowayout: read_nowayout(id),
            })
        }

        /// The driver's name (`Software Watchdog` for softdog).
        pub fn identity(&self) -> String {
            let end = self
                .info
                .identity
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(self.info.identity.len());
            String::from_utf8_lossy(&self.info.identity[..end])
                .trim()
                .to_string()
        }

        /// `WDIOF_*` flags the driver reported.
        pub fn options(&self) -> u32 {
            self.info.options
        }

        /// Whether the driver runs with `nowayout` (from sysfs; `None` when unreadable).
        pub fn nowayout(&self) -> Option<bool> {
            self.nowayout
        }

        fn error(&self, operation: &'static str, source: io::Error) -> WatchdogError {
            WatchdogError::Device {
                path: self.path.clone(),
                operation,
                source,
            }
        }
    }

    /// `/sys/class/watchdog/watchdogN/nowayout` for the device `(major, minor)`.
    fn read_nowayout(id: (u64, u64)) -> Option<bool> {
        let file = if id == LEGACY_DEVICE {
            PathBuf::from("/sys/class/watchdog/watchdog0/nowayout")
        } else {
            PathBuf::from(format!("/sys/dev/char/{}:{}/nowayout", id.0, id.1))
        };
        match std::fs::read_to_string(file).ok()?.trim() {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        }
    }

    impl WatchdogDevice for LinuxWatchdog {
        fn set_timeout(&mut self, timeout_secs: u32) -> Result<u32, WatchdogError> {
            let fd = self.file.as_raw_fd();
            let mut set = None;
            if self.info.options & WDIOF_SETTIMEOUT != 0 {
                let mut value = c_int::try_from(timeout_secs).map_err(|_| {
                    self.error(
                        "WDIOC_SETTIMEOUT",
                        io::Error::new(io::ErrorKind::InvalidInput, "timeout out of range"),
                    )
                })?;
                // SAFETY: `value` is the int the ioctl reads and writes back; the fd is open.
                unsafe { wdioc_settimeout(fd, &mut value) }
                    .map_err(|e| self.error("WDIOC_SETTIMEOUT", e.into()))?;
                set = Some(value);
            }
            let mut current: c_int = 0;
            // SAFETY: `current` is the int the kernel writes; the fd is open.
            let current = match unsafe { wdioc_gettimeout(fd, &mut current) } {
                Ok(_) => current,
                Err(e) => match set {
                    Some(v) => v,
                    None => return Err(self.error("WDIOC_GETTIMEOUT", e.into())),
                },
            };
            u32::try_from(current).map_err(|_| {
                self.error(
                    "WDIOC_GETTIMEOUT",
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the driver reports a timeout of {current} s"),
                    ),
                )
            })
        }

        fn keepalive(&mut self) -> Result<(), WatchdogError> {
            if self.info.options & WDIOF_KEEPALIVEPING != 0 {
                let mut unused: c_int = 0;
                // SAFETY: the kernel ignores the argument; the fd is open.
                unsafe { wdioc_keepalive(self.file.as_raw_fd(), &mut unused) }
                    .map(|_| ())
                    .map_err(|e| self.error("WDIOC_KEEPALIVE", e.into()))
            } else {
                // Any write other than the magic character is a keepalive.
                (&self.file)
                    .write_all(b"1")
                    .map_err(|e| self.error("keepalive write", e))
            }
        }

        fn disarm_and_close(self: Box<Self>) -> Result<(), WatchdogError> {
            (&self.file)
                .write_all(b"V")
                .map_err(|e| self.error("magic close (write 'V')", e))?;
            let LinuxWatchdog { path, file, .. } = *self;
            nix::unistd::close(file).map_err(|e| WatchdogError::Device {
                path,
                operation: "close",
                source: e.into(),
            })
        }

        fn can_be_disabled(&self) -> bool {
            // Without WDIOF_MAGICCLOSE any close stops the timer; with it, the 'V' written first
            // does. Only nowayout prevents it.
            self.nowayout != Some(true)
        }

        fn describe(&self) -> String {
            let identity = match self.identity() {
                i if i.is_empty() => "watchdog".to_string(),
                i => i,
            };
            let firmware = match self.info.firmware_version {
                0 => String::new(),
                v => format!(" (firmware {v})"),
            };
            let magic = if self.info.options & WDIOF_MAGICCLOSE != 0 {
                ""
            } else {
                " (no magic close)"
            };
            format!("{identity}{firmware}{magic} at {}", self.path.display())
        }
    }
}

/// One call a [`DeviceDouble`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCall {
    /// The device at this path was opened (armed).
    Open(PathBuf),
    /// A timeout was asked and this one accepted, in seconds.
    SetTimeout {
        /// Asked.
        asked_secs: u32,
        /// In effect afterwards.
        accepted_secs: u32,
    },
    /// A keepalive.
    Keepalive,
    /// The magic close (`'V'`, then close).
    MagicClose,
    /// Closed without the magic character (dropped): the timer keeps running.
    ClosedArmed,
}

/// A [`WatchdogDevice`] for tests. It records every call and behaves like the kernel's interface:
/// one opener at a time (`EBUSY` otherwise), opening arms, the magic close disarms unless
/// `nowayout`, a plain close leaves it armed. Builders play drivers that fail to open, round the
/// timeout up, ignore it, or fail keepalives. Clones share the record.
#[derive(Debug, Clone, Default)]
pub struct DeviceDouble {
    state: Arc<Mutex<DoubleState>>,
}

#[derive(Debug, Default)]
struct DoubleState {
    calls: Vec<DeviceCall>,
    open: bool,
    armed: bool,
    timeout_secs: u32,
    open_error: Option<io::ErrorKind>,
    granularity_secs: u32,
    fixed_timeout_secs: Option<u32>,
    fail_set_timeout: bool,
    fail_keepalive: bool,
    nowayout: bool,
}

impl DeviceDouble {
    /// A well-behaved driver: every timeout accepted as asked (60 s until set, like softdog).
    pub fn new() -> DeviceDouble {
        let d = DeviceDouble::default();
        d.lock().timeout_secs = 60;
        d
    }

    /// Opening fails with `kind` (`NotFound`: no driver; `PermissionDenied`).
    pub fn failing_open(self, kind: io::ErrorKind) -> DeviceDouble {
        self.lock().open_error = Some(kind);
        self
    }

    /// The driver rounds timeouts up to a multiple of `granularity_secs`.
    pub fn rounding_up_to(self, granularity_secs: u32) -> DeviceDouble {
        self.lock().granularity_secs = granularity_secs;
        self
    }

    /// The driver cannot change its timeout: it stays `timeout_secs`.
    pub fn with_fixed_timeout(self, timeout_secs: u32) -> DeviceDouble {
        {
            let mut s = self.lock();
            s.fixed_timeout_secs = Some(timeout_secs);
            s.timeout_secs = timeout_secs;
        }
        self
    }

    /// `WDIOC_SETTIMEOUT` fails (`EINVAL`).
    pub fn failing_set_timeout(self) -> DeviceDouble {
        self.lock().fail_set_timeout = true;
        self
    }

    /// Keepalives fail (`EIO`).
    pub fn failing_keepalive(self) -> DeviceDouble {
        self.lock().fail_keepalive = true;
        self
    }

    /// The driver runs with `nowayout`: the magic close does not stop the timer.
    pub fn with_nowayout(self) -> DeviceDouble {
        self.lock().nowayout = true;
        self
    }

    /// An opener for [`Watchdog::with_opener`] that opens this double.
    pub fn opener(&self) -> OpenDevice {
        let state = self.state.clone();
        Box::new(move |path: &Path| {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(kind) = s.open_error {
                return Err(WatchdogError::Open {
                    path: path.to_path_buf(),
                    source: io::Error::from(kind),
                });
            }
            if s.open {
                return Err(WatchdogError::Open {
                    path: path.to_path_buf(),
                    source: io::Error::from_raw_os_error(nix::libc::EBUSY),
                });
            }
            s.open = true;
            s.armed = true;
            s.calls.push(DeviceCall::Open(path.to_path_buf()));
            Ok(Box::new(DoubleDevice {
                state: state.clone(),
                path: path.to_path_buf(),
                closed: false,
            }) as Box<dyn WatchdogDevice>)
        })
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<DeviceCall> {
        self.lock().calls.clone()
    }

    /// How many keepalives were sent.
    pub fn keepalives(&self) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| **c == DeviceCall::Keepalive)
            .count()
    }

    /// The timeouts accepted so far, in seconds.
    pub fn timeouts(&self) -> Vec<u32> {
        self.lock()
            .calls
            .iter()
            .filter_map(|c| match c {
                DeviceCall::SetTimeout { accepted_secs, .. } => Some(*accepted_secs),
                _ => None,
            })
            .collect()
    }

    /// Whether the kernel would still be counting down (the node would reset without keepalives).
    pub fn is_armed(&self) -> bool {
        self.lock().armed
    }

    /// Whether the device is open.
    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    fn lock(&self) -> MutexGuard<'_, DoubleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The open device a [`DeviceDouble`] hands out.
struct DoubleDevice {
    state: Arc<Mutex<DoubleState>>,
    path: PathBuf,
    closed: bool,
}

impl DoubleDevice {
    fn lock(&self) -> MutexGuard<'_, DoubleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WatchdogDevice for DoubleDevice {
    fn set_timeout(&mut self, timeout_secs: u32) -> Result<u32, WatchdogError> {
        let path = self.path.clone();
        let mut s = self.lock();
        if s.fail_set_timeout {
            return Err(WatchdogError::Device {
                path,
                operation: "WDIOC_SETTIMEOUT",
                source: io::Error::from_raw_os_error(nix::libc::EINVAL),
            });
        }
        let accepted = match (s.fixed_timeout_secs, s.granularity_secs) {
            (Some(fixed), _) => fixed,
            (None, 0) => timeout_secs,
            (None, g) => timeout_secs.div_ceil(g) * g,
        };
        s.timeout_secs = accepted;
        s.calls.push(DeviceCall::SetTimeout {
            asked_secs: timeout_secs,
            accepted_secs: accepted,
        });
        Ok(accepted)
    }

    fn keepalive(&mut self) -> Result<(), WatchdogError> {
        let path = self.path.clone();
        let mut s = self.lock();
        if s.fail_keepalive {
            return Err(WatchdogError::Device {
                path,
                operation: "WDIOC_KEEPALIVE",
                source: io::Error::from_raw_os_error(nix::libc::EIO),
            });
        }
        s.calls.push(DeviceCall::Keepalive);
        Ok(())
    }

    fn disarm_and_close(mut self: Box<Self>) -> Result<(), WatchdogError> {
        self.closed = true;
        let mut s = self.lock();
        s.calls.push(DeviceCall::MagicClose);
        s.open = false;
        if !s.nowayout {
            s.armed = false;
        }
        Ok(())
    }

    fn can_be_disabled(&self) -> bool {
        !self.lock().nowayout
    }

    fn describe(&self) -> String {
        format!("device double at {}", self.path.display())
    }
}

impl Drop for DoubleDevice {
    fn drop(&mut self) {
        if !self.closed {
            let mut s = self.lock();
            s.calls.push(DeviceCall::ClosedArmed);
            s.open = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceCall::*;

    const TTL: u32 = 30;
    const LOOP_WAIT: u32 = 10;

    fn config(mode: WatchdogMode) -> WatchdogConfig {
        WatchdogConfig {
            mode,
            device: PathBuf::from("/dev/watchdog-test"),
            safety_margin: 5,
        }
    }

    fn watchdog(mode: WatchdogMode, device: &DeviceDouble) -> Watchdog {
        Watchdog::with_opener(&config(mode), device.opener())
    }

    fn open() -> DeviceCall {
        Open(PathBuf::from("/dev/watchdog-test"))
    }

    fn set(asked_secs: u32, accepted_secs: u32) -> DeviceCall {
        SetTimeout {
            asked_secs,
            accepted_secs,
        }
    }

    #[test]
    fn the_controller_can_move_into_a_spawned_task() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Watchdog>();
        assert_send::<DeviceDouble>();
    }

    #[test]
    fn off_mode_never_touches_the_device() {
        let dev = DeviceDouble::new();
        let mut wd = watchdog(WatchdogMode::Off, &dev);
        assert!(wd.may_take_lock(TTL, LOOP_WAIT));
        wd.activate(TTL, LOOP_WAIT).unwrap();
        wd.keepalive().unwrap();
        wd.disable().unwrap();
        assert!(!wd.is_active());
        assert!(wd.is_healthy(TTL, LOOP_WAIT));
        assert_eq!(dev.calls(), vec![]);
    }

    #[test]
    fn required_mode_refuses_the_lock_when_the_device_cannot_be_opened() {
        for kind in [io::ErrorKind::NotFound, io::ErrorKind::PermissionDenied] {
            let dev = DeviceDouble::new().failing_open(kind);
            let mut wd = watchdog(WatchdogMode::Required, &dev);
            assert!(!wd.may_take_lock(TTL, LOOP_WAIT), "{kind:?}");
            assert!(!wd.may_take_lock(TTL, LOOP_WAIT), "{kind:?}: still refused");
            assert!(!wd.is_active());
            let e = wd.activate(TTL, LOOP_WAIT).unwrap_err();
            assert!(matches!(e, WatchdogError::Open { .. }), "{e}");
            assert!(e.to_string().contains("/dev/watchdog-test"), "{e}");
        }
    }

    #[test]
    fn automatic_mode_takes_the_lock_without_a_device() {
        let dev = DeviceDouble::new().failing_open(io::ErrorKind::NotFound);
        let mut wd = watchdog(WatchdogMode::Automatic, &dev);
        assert!(wd.may_take_lock(TTL, LOOP_WAIT));
        assert!(!wd.is_active());
        wd.keepalive().unwrap();
        wd.disable().unwrap();
        assert_eq!(dev.calls(), vec![]);
    }

    #[test]
    fn armed_with_ttl_minus_safety_margin() {
        let dev = DeviceDouble::new();
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        assert!(wd.may_take_lock(TTL, LOOP_WAIT));
        assert!(wd.is_active());
        assert!(dev.is_armed());
        assert_eq!(wd.timeout_secs(), Some(25));
        assert_eq!(dev.calls(), vec![open(), set(25, 25)]);
    }

    #[test]
    fn safety_margin_minus_one_arms_with_half_the_ttl() {
        let dev = DeviceDouble::new();
        let mut cfg = config(WatchdogMode::Required);
        cfg.safety_margin = -1;
        let mut wd = Watchdog::with_opener(&cfg, dev.opener());
        wd.activate(TTL, LOOP_WAIT).unwrap();
        assert_eq!(dev.timeouts(), vec![15]);
    }

    #[test]
    fn keepalives_are_recorded_while_active_only() {
        let dev = DeviceDouble::new();
        let mut wd = watchdog(WatchdogMode::Automatic, &dev);
        wd.keepalive().unwrap();
        assert_eq!(dev.keepalives(), 0, "not armed yet");
        assert!(wd.may_take_lock(TTL, LOOP_WAIT));
        for _ in 0..3 {
            wd.keepalive().unwrap();
        }
        wd.disable().unwrap();
        wd.keepalive().unwrap();
        assert_eq!(
            dev.calls(),
            vec![
                open(),
                set(25, 25),
                Keepalive,
                Keepalive,
                Keepalive,
                MagicClose
            ]
        );
    }

    #[test]
    fn disable_does_the_magic_close_and_is_idempotent() {
        let dev = DeviceDouble::new();
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        wd.activate(TTL, LOOP_WAIT).unwrap();
        wd.disable().unwrap();
        wd.disable().unwrap();
        assert!(!wd.is_active());
        assert_eq!(wd.timeout_secs(), None);
        assert!(!dev.is_armed());
        assert!(!dev.is_open());
        assert_eq!(dev.calls(), vec![open(), set(25, 25), MagicClose]);
    }

    #[test]
    fn activates_again_after_disable() {
        let dev = DeviceDouble::new();
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        assert!(wd.may_take_lock(TTL, LOOP_WAIT));
        wd.disable().unwrap();
        assert!(wd.may_take_lock(TTL, LOOP_WAIT));
        wd.keepalive().unwrap();
        assert!(dev.is_armed());
        assert_eq!(
            dev.calls(),
            vec![
                open(),
                set(25, 25),
                MagicClose,
                open(),
                set(25, 25),
                Keepalive
            ]
        );
    }

    #[test]
    fn activate_while_active_changes_nothing_unless_ttl_changed() {
        let dev = DeviceDouble::new();
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        wd.activate(TTL, LOOP_WAIT).unwrap();
        wd.activate(TTL, LOOP_WAIT).unwrap();
        assert!(wd.may_take_lock(TTL, LOOP_WAIT));
        assert_eq!(dev.calls(), vec![open(), set(25, 25)]);
        wd.activate(20, 5).unwrap();
        assert_eq!(wd.timeout_secs(), Some(15));
        assert_eq!(dev.calls(), vec![open(), set(25, 25), set(15, 15)]);
    }

    #[test]
    fn driver_rounding_the_timeout_beyond_ttl_minus_margin_is_refused_in_required_mode() {
        let dev = DeviceDouble::new().rounding_up_to(16);
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        let e = wd.activate(TTL, LOOP_WAIT).unwrap_err();
        assert!(
            matches!(
                e,
                WatchdogError::TimeoutTooLong {
                    wanted_secs: 25,
                    accepted_secs: 32,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("/dev/watchdog-test"), "{e}");
        assert!(!wd.is_active());
        assert!(!dev.is_armed());
        assert!(!wd.may_take_lock(TTL, LOOP_WAIT));
        assert!(!dev.is_armed());
        assert_eq!(dev.calls()[..3], [open(), set(25, 32), MagicClose]);
    }

    #[test]
    fn driver_rounding_the_timeout_up_is_kept_in_automatic_mode() {
        let dev = DeviceDouble::new().rounding_up_to(16);
        let mut wd = watchdog(WatchdogMode::Automatic, &dev);
        assert!(wd.may_take_lock(TTL, LOOP_WAIT));
        assert!(wd.is_active(), "a later reset beats none");
        assert_eq!(wd.timeout_secs(), Some(32));
        assert!(
            wd.may_take_lock(TTL, LOOP_WAIT),
            "asked again: same verdict"
        );
        wd.keepalive().unwrap();
        assert_eq!(dev.calls(), vec![open(), set(25, 32), Keepalive]);
    }

    #[test]
    fn rounding_within_ttl_minus_margin_is_accepted() {
        let dev = DeviceDouble::new().rounding_up_to(5);
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        wd.activate(TTL, LOOP_WAIT).unwrap(); // 25 is a multiple of 5
        assert_eq!(wd.timeout_secs(), Some(25));
    }

    #[test]
    fn timeout_not_longer_than_loop_wait_is_refused_without_opening() {
        let dev = DeviceDouble::new();
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        // ttl 6, safety_margin 5: a 1 s timeout with loop_wait 1 would reset a healthy leader.
        let e = wd.activate(6, 1).unwrap_err();
        assert!(matches!(e, WatchdogError::LoopWaitTooLong { .. }), "{e}");
        let e = wd.activate(5, 1).unwrap_err();
        assert!(matches!(e, WatchdogError::NoTimeout { .. }), "{e}");
        assert!(!wd.may_take_lock(6, 1));
        assert!(!wd.is_healthy(6, 1));
        assert_eq!(dev.calls(), vec![]);
        let mut wd = watchdog(WatchdogMode::Automatic, &dev);
        assert!(wd.may_take_lock(6, 1));
        assert_eq!(dev.calls(), vec![]);
    }

    #[test]
    fn driver_with_a_timeout_shorter_than_loop_wait_is_disarmed() {
        let dev = DeviceDouble::new().with_fixed_timeout(8);
        let mut wd = watchdog(WatchdogMode::Automatic, &dev);
        let e = wd.activate(TTL, LOOP_WAIT).unwrap_err();
        assert!(
            matches!(
                e,
                WatchdogError::TimeoutTooShort {
                    accepted_secs: 8,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!wd.is_active());
        assert!(!dev.is_armed());
        assert!(wd.may_take_lock(TTL, LOOP_WAIT), "automatic goes on");
        assert!(!dev.is_armed());
    }

    #[test]
    fn loop_wait_growing_past_the_armed_timeout_disarms() {
        let dev = DeviceDouble::new().with_fixed_timeout(20);
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        wd.activate(TTL, LOOP_WAIT).unwrap();
        let e = wd.activate(TTL, 20).unwrap_err();
        assert!(matches!(e, WatchdogError::TimeoutTooShort { .. }), "{e}");
        assert!(!dev.is_armed());
    }

    #[test]
    fn failed_set_timeout_on_a_fresh_device_disarms_it() {
        let dev = DeviceDouble::new().failing_set_timeout();
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        let e = wd.activate(TTL, LOOP_WAIT).unwrap_err();
        assert!(matches!(e, WatchdogError::Device { .. }), "{e}");
        assert!(e.to_string().contains("/dev/watchdog-test"), "{e}");
        assert!(!dev.is_armed());
        assert_eq!(dev.calls(), vec![open(), MagicClose]);
    }

    #[test]
    fn failed_keepalive_is_reported_and_the_device_stays_armed() {
        let dev = DeviceDouble::new().failing_keepalive();
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        wd.activate(TTL, LOOP_WAIT).unwrap();
        let e = wd.keepalive().unwrap_err();
        assert_eq!(e.path(), Path::new("/dev/watchdog-test"));
        assert!(wd.is_active());
        assert!(dev.is_armed());
    }

    #[test]
    fn nowayout_device_gets_a_last_keepalive_and_stays_armed_after_disable() {
        let dev = DeviceDouble::new().with_nowayout();
        let mut wd = watchdog(WatchdogMode::Automatic, &dev);
        assert!(wd.may_take_lock(TTL, LOOP_WAIT));
        wd.disable().unwrap();
        assert_eq!(
            dev.calls(),
            vec![open(), set(25, 25), Keepalive, MagicClose]
        );
        assert!(dev.is_armed(), "the kernel keeps counting: the node resets");
    }

    #[test]
    fn dropping_an_armed_watchdog_leaves_the_timer_running() {
        let dev = DeviceDouble::new();
        let mut wd = watchdog(WatchdogMode::Required, &dev);
        wd.activate(TTL, LOOP_WAIT).unwrap();
        drop(wd);
        assert_eq!(dev.calls(), vec![open(), set(25, 25), ClosedArmed]);
        assert!(dev.is_armed());
        assert!(!dev.is_open());
    }

    #[test]
    fn a_second_opener_gets_busy_naming_the_path() {
        let dev = DeviceDouble::new();
        let mut first = watchdog(WatchdogMode::Required, &dev);
        let mut second = watchdog(WatchdogMode::Required, &dev);
        first.activate(TTL, LOOP_WAIT).unwrap();
        let e = second.activate(TTL, LOOP_WAIT).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/dev/watchdog-test"), "{text}");
        assert!(text.contains("another process holds it open"), "{text}");
        first.disable().unwrap();
    }

    #[test]
    fn required_mode_is_unhealthy_when_the_device_is_missing_or_the_timing_impossible() {
        let dev = DeviceDouble::new();
        let dir = tempfile::tempdir().unwrap();
        let writable = dir.path().join("watchdog");
        std::fs::write(&writable, b"").unwrap();
        let mut cfg = config(WatchdogMode::Required);
        cfg.device = writable;
        let wd = Watchdog::with_opener(&cfg, dev.opener());
        assert!(wd.is_healthy(TTL, LOOP_WAIT));
        assert!(!wd.is_healthy(6, 1), "1 s timeout with loop_wait 1");
        cfg.device = dir.path().join("missing");
        let wd = Watchdog::with_opener(&cfg, dev.opener());
        assert!(!wd.is_healthy(TTL, LOOP_WAIT));
        cfg.mode = WatchdogMode::Automatic;
        let wd = Watchdog::with_opener(&cfg, dev.opener());
        assert!(wd.is_healthy(TTL, LOOP_WAIT));
    }

    /// The real device type against the real kernel, on paths that are not watchdogs (this
    /// sandbox's kernel has no watchdog driver; see the README section Watchdog).
    #[cfg(target_os = "linux")]
    mod linux_device {
        use super::super::linux::*;
        use super::*;

        #[test]
        fn ioctl_request_codes_match_linux_watchdog_h() {
            assert_eq!(std::mem::size_of::<WatchdogInfo>(), 40);
            // _IOR/_IOWR('W', nr, size) on the generic ioctl layout (x86, arm, riscv).
            // `ioctl_num_type` is c_ulong on glibc, c_int on musl.
            #[allow(clippy::unnecessary_cast)]
            #[cfg(any(
                target_arch = "x86_64",
                target_arch = "x86",
                target_arch = "aarch64",
                target_arch = "arm",
                target_arch = "riscv64"
            ))]
            {
                assert_eq!(WDIOC_GETSUPPORT as u64, 0x8028_5700);
                assert_eq!(WDIOC_KEEPALIVE as u64, 0x8004_5705);
                assert_eq!(WDIOC_SETTIMEOUT as u64, 0xC004_5706);
                assert_eq!(WDIOC_GETTIMEOUT as u64, 0x8004_5707);
            }
        }

        #[test]
        fn linux_device_refuses_a_missing_path_naming_it() {
            let e = LinuxWatchdog::open(Path::new("/nonexistent/watchdog")).unwrap_err();
            assert!(matches!(e, WatchdogError::Open { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains("/nonexistent/watchdog"), "{text}");
            assert!(text.contains("modprobe softdog"), "{text}");
        }

        #[test]
        fn linux_device_refuses_a_regular_file_and_leaves_it_untouched() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("watchdog");
            std::fs::write(&path, b"data").unwrap();
            let e = LinuxWatchdog::open(&path).unwrap_err();
            assert!(matches!(e, WatchdogError::NotAWatchdog { .. }), "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), b"data");
        }

        #[test]
        fn linux_device_refuses_a_character_device_that_is_not_a_watchdog() {
            // /dev/null answers WDIOC_GETSUPPORT with ENOTTY: the real ioctl path, refused.
            let e = LinuxWatchdog::open(Path::new("/dev/null")).unwrap_err();
            assert!(matches!(e, WatchdogError::NotAWatchdog { .. }), "{e}");
            let text = e.to_string();
            assert!(
                text.starts_with("/dev/null is not a watchdog device"),
                "{text}"
            );
            assert!(text.contains("WDIOC_GETSUPPORT"), "{text}");
        }

        #[test]
        fn controller_on_the_linux_opener_follows_the_mode() {
            let mut cfg = config(WatchdogMode::Required);
            cfg.device = PathBuf::from("/dev/null");
            let mut wd = Watchdog::new(&cfg);
            assert!(!wd.may_take_lock(TTL, LOOP_WAIT));
            cfg.mode = WatchdogMode::Automatic;
            let mut wd = Watchdog::new(&cfg);
            assert!(wd.may_take_lock(TTL, LOOP_WAIT));
            assert!(!wd.is_active());
        }
    }
}
