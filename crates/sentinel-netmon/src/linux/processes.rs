//! Finds which process owns each socket, and what that process is, from `/proc`.
//!
//! The kernel links a socket to processes only through file descriptors: `/proc/<pid>/fd/<n>`
//! is a symlink to `socket:[<inode>]`. Reading every link of every process each second would
//! cost more than the rest of the collection, so the inode → pid map is cached and `/proc` is
//! walked only when a socket appears whose owner is not known yet, stopping as soon as all new
//! sockets are found. A full rebuild every [`FULL_SCAN_EVERY`] collections corrects what the
//! cache cannot see (a socket passed to another process, or inherited before its opener exited).
//!
//! Processes exit between any two reads: every read here treats a missing file as "this process
//! is gone" and moves on.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::record::{MAX_CMDLINE_BYTES, ProcessInfo};

/// Collections between two full rebuilds of the socket owner map.
const FULL_SCAN_EVERY: u32 = 60;

/// Cached map from socket inode to owning pid.
#[derive(Default)]
pub(crate) struct SocketOwners {
    by_inode: HashMap<u64, u32>,
    /// Sockets looked for and not found (owner exited, no permission): not looked for again
    /// until the next full rebuild, so one of them does not cost a walk of `/proc` every second.
    unresolved: HashSet<u64>,
    collections_since_full_scan: u32,
}

impl SocketOwners {
    /// Brings the map up to date for the sockets currently open (`inodes`, without 0).
    pub fn refresh(&mut self, inodes: &HashSet<u64>) {
        self.by_inode.retain(|inode, _| inodes.contains(inode));
        self.unresolved.retain(|inode| inodes.contains(inode));
        self.collections_since_full_scan += 1;
        if self.collections_since_full_scan >= FULL_SCAN_EVERY {
            self.collections_since_full_scan = 0;
            self.by_inode.clear();
            self.unresolved.clear();
        }
        let mut missing: HashSet<u64> = inodes
            .iter()
            .filter(|inode| !self.by_inode.contains_key(inode) && !self.unresolved.contains(inode))
            .copied()
            .collect();
        if missing.is_empty() {
            return;
        }
        let Ok(proc_dir) = fs::read_dir("/proc") else { return };
        for entry in proc_dir.flatten() {
            let Some(pid) = parse_pid(&entry.file_name()) else { continue };
            let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
            for fd in fds.flatten() {
                let Ok(target) = fs::read_link(fd.path()) else { continue };
                let Some(inode) = socket_inode(target.as_os_str()) else { continue };
                // The first process found keeps a shared socket (after fork(), the parent,
                // listed first): stable from one collection to the next.
                if missing.remove(&inode) {
                    self.by_inode.insert(inode, pid);
                }
            }
            if missing.is_empty() {
                break;
            }
        }
        self.unresolved.extend(missing);
    }

    pub fn owner(&self, inode: u64) -> Option<u32> {
        self.by_inode.get(&inode).copied()
    }

    /// Drops what is known about `pid`, which has exited: its sockets are looked up again.
    pub fn forget(&mut self, pid: u32) {
        self.by_inode.retain(|_, owner| *owner != pid);
    }
}

/// Process details, read once per process and reused while its start time stays the same (a
/// reused pid has a new start time).
pub(crate) struct ProcessTable {
    processes: HashMap<u32, CachedProcess>,
    users: UserNames,
    boot_time: Option<SystemTime>,
    ticks_per_second: u64,
}

struct CachedProcess {
    start_ticks: u64,
    info: ProcessInfo,
}

impl ProcessTable {
    pub fn new() -> ProcessTable {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ProcessTable {
            processes: HashMap::new(),
            users: UserNames::default(),
            boot_time: read_boot_time(),
            ticks_per_second: u64::try_from(ticks).ok().filter(|&ticks| ticks > 0).unwrap_or(100),
        }
    }

    /// Details of `pid`, or `None` if it has exited or `/proc` refuses.
    pub fn lookup(&mut self, pid: u32, host: &str) -> Option<&ProcessInfo> {
        let stat = read_stat(pid)?;
        let cached = self.processes.get(&pid).is_some_and(|cached| cached.start_ticks == stat.start_ticks);
        if !cached {
            let info = self.read_info(pid, host, &stat);
            self.processes.insert(pid, CachedProcess { start_ticks: stat.start_ticks, info });
        }
        let entry = self.processes.get_mut(&pid)?;
        // The name can change (prctl(PR_SET_NAME)) without the process changing.
        if entry.info.name != stat.name {
            entry.info.name = stat.name;
        }
        Some(&entry.info)
    }

    /// Forgets processes not in `alive`, so the cache does not grow with every pid ever seen.
    pub fn retain(&mut self, alive: &HashSet<u32>) {
        self.processes.retain(|pid, _| alive.contains(pid));
    }

    fn read_info(&mut self, pid: u32, host: &str, stat: &Stat) -> ProcessInfo {
        let dir = Path::new("/proc").join(pid.to_string());
        let path = fs::read_link(dir.join("exe")).ok().map(|path| path.to_string_lossy().into_owned());
        let user = read_effective_uid(&dir).map(|uid| self.users.name(uid));
        let (cmdline, cmdline_truncated) = read_cmdline(&dir);
        let start_time = self.boot_time.map(|boot| {
            boot + Duration::from_millis(stat.start_ticks.saturating_mul(1000) / self.ticks_per_second)
        });
        ProcessInfo {
            host: host.to_owned(),
            pid,
            ppid: Some(stat.ppid).filter(|&ppid| ppid != 0),
            name: stat.name.clone(),
            path,
            user,
            cmdline,
            cmdline_truncated,
            start_time,
        }
    }
}

struct Stat {
    name: String,
    ppid: u32,
    start_ticks: u64,
}

/// Reads `/proc/<pid>/stat`. The name (field 2) is in parentheses and may itself contain spaces
/// and parentheses, so the fields after it are found from the *last* `)`.
fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let open = text.iter().position(|&byte| byte == b'(')?;
    let close = text.iter().rposition(|&byte| byte == b')')?;
    let name = String::from_utf8_lossy(text.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    // After the name: state (3), ppid (4), … starttime (22).
    let mut fields = rest.split_ascii_whitespace();
    let ppid = fields.nth(1)?.parse().ok()?;
    let start_ticks = fields.nth(17)?.parse().ok()?;
    Some(Stat { name, ppid, start_ticks })
}

fn read_effective_uid(dir: &Path) -> Option<u32> {
    let status = fs::read_to_string(dir.join("status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Reads at most [`MAX_CMDLINE_BYTES`] of the command line: an attacker controls its length.
fn read_cmdline(dir: &Path) -> (Vec<String>, bool) {
    let Ok(file) = fs::File::open(dir.join("cmdline")) else { return (Vec::new(), false) };
    let mut bytes = Vec::new();
    if file.take(MAX_CMDLINE_BYTES as u64 + 1).read_to_end(&mut bytes).is_err() {
        return (Vec::new(), false);
    }
    let truncated = bytes.len() > MAX_CMDLINE_BYTES;
    bytes.truncate(MAX_CMDLINE_BYTES);
    if bytes.last() == Some(&0) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return (Vec::new(), truncated);
    }
    let mut arguments: Vec<String> = bytes
        .split(|&byte| byte == 0)
        .map(|argument| String::from_utf8_lossy(argument).into_owned())
        .collect();
    // Lossy decoding can lengthen an argument cut inside a multi-byte character: keep the bound.
    while arguments.iter().map(String::len).sum::<usize>() > MAX_CMDLINE_BYTES {
        let Some(last) = arguments.last_mut() else { break };
        if last.pop().is_none() {
            arguments.pop();
        }
    }
    (arguments, truncated)
}

fn read_boot_time() -> Option<SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let seconds: u64 = stat.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

fn parse_pid(name: &OsStr) -> Option<u32> {
    std::str::from_utf8(name.as_bytes()).ok()?.parse().ok()
}

fn socket_inode(target: &OsStr) -> Option<u64> {
    let digits = target.as_bytes().strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// User names from `/etc/passwd`, reloaded when a uid is missing and the file has changed.
/// Users from NSS sources (LDAP, sssd) are shown as their number.
#[derive(Default)]
struct UserNames {
    by_uid: HashMap<u32, String>,
    loaded_from: Option<SystemTime>,
}

impl UserNames {
    fn name(&mut self, uid: u32) -> String {
        if !self.by_uid.contains_key(&uid) {
            self.reload_if_changed();
        }
        self.by_uid.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
    }

    fn reload_if_changed(&mut self) {
        let modified = fs::metadata("/etc/passwd").and_then(|metadata| metadata.modified()).ok();
        if modified.is_some() && modified == self.loaded_from {
            return;
        }
        self.loaded_from = modified;
        let Ok(passwd) = fs::read_to_string("/etc/passwd") else { return };
        self.by_uid = passwd
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let uid = fields.nth(1)?.parse().ok()?;
                Some((uid, name.to_owned()))
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_are_recognised_and_others_ignored() {
        assert_eq!(socket_inode(OsStr::new("socket:[123456]")), Some(123456));
        assert_eq!(socket_inode(OsStr::new("pipe:[123]")), None);
        assert_eq!(socket_inode(OsStr::new("socket:[12")), None);
        assert_eq!(socket_inode(OsStr::new("/dev/null")), None);
    }

    #[test]
    fn own_process_is_read_from_proc() {
        let mut table = ProcessTable::new();
        let pid = std::process::id();
        let info = table.lookup(pid, "h").unwrap().clone();
        assert_eq!(info.pid, pid);
        assert!(info.ppid.is_some());
        assert_eq!(
            info.path.as_deref(),
            std::env::current_exe().ok().and_then(|p| p.to_str().map(String::from)).as_deref()
        );
        assert!(!info.cmdline.is_empty());
        let age = SystemTime::now().duration_since(info.start_time.unwrap()).unwrap();
        assert!(age < Duration::from_secs(3600), "the test process started recently, not {age:?} ago");
        assert!(table.lookup(u32::MAX, "h").is_none());
    }
}
