//! The agent's resident code: pages of its executable touched once and never again.
//!
//! The agent's binary holds about 40 MB of code (wasmtime, cranelift, tract, hyper, rustls...).
//! Starting up runs code scattered across all of it, and the kernel maps 64 KiB around every
//! page that faults, so a freshly started agent keeps ~18 MiB of its binary resident, while an
//! idle agent touches ~1.5 MiB of it. Those pages are clean copies of the file, but they count
//! in the agent's RSS, raise its OOM score and are kept from reclaim as mapped executable pages.
//!
//! [`release_unused_code`] drops this process's page-table entries for the executable's own
//! read-only mappings; what is used again comes back from the page cache on the next access (a
//! minor fault, no I/O). Only mappings of the executable qualify: they live as long as the
//! process, so no other mapping can take their addresses between reading the map and the
//! `madvise`, and only those that hold no page of their own (relocated pages of RELRO are
//! excluded by that).
//!
//! Linux only: it reads `/proc/self/smaps` and relies on what `MADV_DONTNEED` does there.

use std::ops::Range;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

/// When the first release happens: the link is up and restored pipelines are loaded by then.
const FIRST_RELEASE: Duration = Duration::from_secs(5);
/// How often code is released again: what was touched meanwhile (a deployment compiles with
/// cranelift, for one) returns to the page cache, and what idle needs comes back in a few dozen
/// minor faults.
const RELEASE_INTERVAL: Duration = Duration::from_secs(60);

/// One mapping of `/proc/self/smaps`, as far as the release needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    range: Range<usize>,
    perms: String,
    path: String,
    /// Anonymous and swapped pages, in kB: copies the process owns (a relocated page, say).
    /// A dirty page of a file just written is the file's, not the process's.
    own_kb: u64,
    /// Whether the entry said how many anonymous pages it holds: one that does not (a kernel
    /// that words smaps differently) may hold some, so it is never released.
    anonymous_known: bool,
    locked: bool,
}

fn parse(smaps: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            let perms = words.next().unwrap_or_default().to_owned();
            // offset, device, inode, then the path (which may contain spaces).
            let path = words.skip(3).collect::<Vec<_>>().join(" ");
            mappings.push(Mapping {
                range: lo..hi,
                perms,
                path,
                own_kb: 0,
                anonymous_known: false,
                locked: false,
            });
            continue;
        }
        let Some(current) = mappings.last_mut() else {
            continue;
        };
        match first {
            "Anonymous:" | "Swap:" => {
                if first == "Anonymous:" {
                    current.anonymous_known = true;
                }
                let kb = words.next().and_then(|w| w.parse::<u64>().ok());
                // Unreadable counts as owned: such a mapping is left alone.
                current.own_kb = current.own_kb.saturating_add(kb.unwrap_or(u64::MAX));
            }
            "VmFlags:" => current.locked = words.any(|flag| flag == "lo"),
            _ => {}
        }
    }
    mappings
}

/// The ranges of `smaps` that can be released: private, read-only mappings of `executable` that
/// show explicitly that they hold no page of their own (`Anonymous: 0 kB`, no swap) and are not
/// locked.
fn releasable(smaps: &str, executable: &str) -> Vec<Range<usize>> {
    parse(smaps)
        .into_iter()
        .filter(|m| {
            let perms = m.perms.as_bytes();
            m.path == executable
                && perms.len() == 4
                && perms[1] == b'-'
                && perms[3] == b'p'
                && m.anonymous_known
                && m.own_kb == 0
                && !m.locked
                && !m.range.is_empty()
        })
        .map(|m| m.range)
        .collect()
}

/// Releases the executable's resident code and read-only data; returns how many bytes of
/// address space were released (what was resident of it is no longer counted in RSS).
pub fn release_unused_code() -> std::io::Result<usize> {
    let executable = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for range in releasable(&smaps, &executable.to_string_lossy()) {
        let len = range.end - range.start;
        #[allow(unsafe_code)]
        // SAFETY: `range` is a whole mapping of this process's executable, which stays mapped
        // for the life of the process, so nothing else can be at these addresses. It is private,
        // not writable and holds no anonymous or swapped page: MADV_DONTNEED only drops
        // page-table entries, and the next access maps the same file page again.
        let rc =
            unsafe { libc::madvise(range.start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        released += len;
    }
    Ok(released)
}

/// Releases unused code [`FIRST_RELEASE`] after the start, then every [`RELEASE_INTERVAL`],
/// until `stop` turns true.
pub async fn release_periodically(mut stop: watch::Receiver<bool>) {
    let mut next = tokio::time::Instant::now() + FIRST_RELEASE;
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep_until(next) => {}
        }
        match tokio::task::spawn_blocking(release_unused_code).await {
            Ok(Ok(bytes)) => debug!(bytes, "unused code released"),
            Ok(Err(e)) => {
                // /proc unreadable or madvise refused: nothing to do, now or later.
                warn!(error = %e, "cannot release unused code");
                return;
            }
            Err(_) => return,
        }
        next += RELEASE_INTERVAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55b33e2ca000-55b33efc7000 r--p 00000000 fe:00 10265021                   /opt/tern/tern-agent
Size:              13300 kB
Rss:                5076 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me sd
55b33efc7000-55b3417a0000 r-xp 00cfc000 fe:00 10265021                   /opt/tern/tern-agent
Rss:               11748 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me sd
55b3417a0000-55b34196a000 r--p 034d4000 fe:00 10265021                   /opt/tern/tern-agent
Rss:                1832 kB
Private_Dirty:      1832 kB
Anonymous:          1832 kB
Swap:                  0 kB
VmFlags: rd mr mw me ac sd
55b34196a000-55b341973000 rw-p 0369d000 fe:00 10265021                   /opt/tern/tern-agent
Anonymous:             0 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0000100000 r-xp 00000000 fe:00 777                        /usr/lib/libc.so.6
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7f0000200000-7f0000300000 r-xp 00000000 fe:00 10265021                   /opt/tern/tern-agent
Anonymous:             0 kB
VmFlags: rd ex mr mw me lo sd
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Anonymous:           132 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_are_released() {
        let ranges = releasable(SMAPS, "/opt/tern/tern-agent");
        assert_eq!(
            ranges,
            vec![
                0x55b3_3e2c_a000..0x55b3_3efc_7000,
                0x55b3_3efc_7000..0x55b3_417a_0000,
            ],
            "relocated (anonymous), writable, locked and other files' mappings stay"
        );
    }

    #[test]
    fn paths_with_spaces_and_unreadable_counters_are_handled() {
        let smaps = "\
1000-2000 r-xp 00000000 fe:00 1 /opt/my agent/tern-agent
Anonymous: many kB
3000-4000 r-xp 00000000 fe:00 1 /opt/my agent/tern-agent
Anonymous: 0 kB
";
        assert_eq!(
            releasable(smaps, "/opt/my agent/tern-agent"),
            vec![0x3000..0x4000]
        );
        assert!(releasable("garbage\n\n-\nzz-yy r-xp\n", "/x").is_empty());
    }

    #[test]
    fn a_mapping_without_an_anonymous_count_is_kept() {
        let smaps = "\
1000-2000 r-xp 00000000 fe:00 1 /opt/tern/tern-agent
Rss: 4 kB
Swap: 0 kB
VmFlags: rd ex mr mw me sd
3000-4000 r-xp 00000000 fe:00 1 /opt/tern/tern-agent
Anonymous: 0 kB
VmFlags: rd ex mr mw me sd
5000-6000 r--p 00000000 fe:00 1 /opt/tern/tern-agent
";
        assert_eq!(
            releasable(smaps, "/opt/tern/tern-agent"),
            vec![0x3000..0x4000],
            "only a mapping that reports `Anonymous: 0 kB` is released"
        );
    }

    #[test]
    fn releasing_keeps_the_process_running_and_lowers_its_file_pages() {
        let before = file_rss_kb();
        let released = release_unused_code().expect("release");
        assert!(released > 0, "the test binary's code is releasable");
        // Code still runs (its pages fault back in) and data is intact.
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        assert!(
            file_rss_kb() < before,
            "file-backed resident pages fell: {before} kB before"
        );
    }

    fn file_rss_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("RssFile")
    }
}
