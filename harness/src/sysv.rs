//! Removes the System V shared memory segment a killed PostgreSQL leaves behind.
//!
//! A postmaster holds one small System V segment (56 bytes since PostgreSQL 9.3; the rest is
//! anonymous or POSIX memory) and removes it when it exits, also on an immediate shutdown. A
//! postmaster killed with SIGKILL cannot: the segment stays until a postmaster starts in the same
//! data directory (which finds it through `postmaster.pid` and removes it). Tests delete their
//! data directories, so every killed instance leaked one, until the kernel's limit (`kernel.shmmni`,
//! 4,096 here) was reached after a day of nemesis kills and every `initdb` failed with "could not
//! create shared memory segment: No space left on device".

use std::path::Path;

/// Marks for removal the System V segment that `data_dir`'s `postmaster.pid` names (line 7: key
/// and shmid), when a segment with that id still exists under that key: the kernel destroys it
/// once the last process detaches. Does nothing without the file, the line or the segment. Called
/// once the instance is stopped or killed for good (a test's teardown), never while another
/// postmaster may run in `data_dir`.
pub fn remove_segment_of(data_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return;
    };
    let Some((key, id)) = text.lines().nth(6).and_then(parse_key_and_id) else {
        return;
    };
    // SAFETY: shmid_ds is plain data; IPC_STAT fills it or fails, IPC_RMID reads nothing.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(id, libc::IPC_STAT, &mut ds) != 0 {
            return;
        }
        // The id may have been reused by another instance's segment since: its key tells.
        if ds.shm_perm.__key as i64 != key {
            return;
        }
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
    }
}

/// The key and shmid of `postmaster.pid`'s seventh line (`"  5432001    123456"`).
fn parse_key_and_id(line: &str) -> Option<(i64, i32)> {
    let mut fields = line.split_whitespace();
    let key = fields.next()?.parse().ok()?;
    let id = fields.next()?.parse().ok()?;
    Some((key, id))
}

#[cfg(test)]
mod tests {
    use super::parse_key_and_id;

    #[test]
    fn the_seventh_line_of_postmaster_pid_gives_key_and_id() {
        assert_eq!(
            parse_key_and_id("  5432001     32770"),
            Some((5432001, 32770))
        );
        assert_eq!(parse_key_and_id(""), None);
        assert_eq!(parse_key_and_id("ready"), None);
    }
}
