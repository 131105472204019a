//! Listening TCP ports, to tell the role of a connection the agent did not see open.
//!
//! A connection opened before the agent started has no connect or accept event. If its
//! local port is a port some socket listens on in the owner's network namespace, it is
//! the server end; otherwise the client end.

use std::collections::{HashMap, HashSet};

/// Local ports in state LISTEN from the text of /proc/<pid>/net/tcp or tcp6.
pub fn parse_listening_ports(text: &str) -> Vec<u16> {
    const TCP_LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != TCP_LISTEN {
                return None;
            }
            let port_hex = local.rsplit(':').next()?;
            u16::from_str_radix(port_hex, 16).ok()
        })
        .collect()
}

/// Listening ports per process, read from procfs on demand and kept briefly.
pub struct Listeners {
    procfs: std::path::PathBuf,
    by_pid: HashMap<u32, (u64, HashSet<u16>)>,
    max_age_ns: u64,
}

impl Listeners {
    pub fn new(procfs: impl Into<std::path::PathBuf>) -> Self {
        Self {
            procfs: procfs.into(),
            by_pid: HashMap::new(),
            max_age_ns: 5_000_000_000,
        }
    }

    /// Whether `port` is listened on in the network namespace of `pid`.
    pub fn is_listening(&mut self, pid: u32, port: u16, now_ns: u64) -> bool {
        let fresh = matches!(self.by_pid.get(&pid), Some((at, _)) if now_ns.saturating_sub(*at) < self.max_age_ns);
        if !fresh {
            let mut ports = HashSet::new();
            for file in ["net/tcp", "net/tcp6"] {
                let path = self.procfs.join(pid.to_string()).join(file);
                if let Ok(text) = std::fs::read_to_string(path) {
                    ports.extend(parse_listening_ports(&text));
                }
            }
            // Bounded: a table entry per process that had an unknown connection, pruned
            // wholesale when it grows (it is only a cache).
            if self.by_pid.len() > 4096 {
                self.by_pid.clear();
            }
            self.by_pid.insert(pid, (now_ns, ports));
        }
        self.by_pid
            .get(&pid)
            .is_some_and(|(_, ports)| ports.contains(&port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_ports_only() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:9C40 0100007F:18EB 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert_eq!(parse_listening_ports(text), vec![0x18EB]);
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 3\n";
        assert_eq!(parse_listening_ports(v6), vec![8080]);
        assert!(parse_listening_ports("garbage\nmore garbage here 0A").is_empty());
    }
}
