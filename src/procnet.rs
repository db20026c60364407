//! Kernel-side UDP drops (`/proc/net/udp`, `/proc/net/udp6`, column `drops`): datagrams the
//! kernel discarded because a socket's receive buffer was full. They never reached twinrx, so
//! the receivers cannot count them; status and metrics read them here, per listen address.

use std::net::{IpAddr, SocketAddr};

/// Drops of the UDP socket bound to `addr` since it was created, if the kernel shows it.
pub fn udp_drops(addr: SocketAddr) -> Option<u64> {
    let (file, want) = match addr.ip() {
        IpAddr::V4(v4) => (
            "/proc/net/udp",
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(v4.octets()),
                addr.port()
            ),
        ),
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for chunk in v6.octets().chunks(4) {
                let w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                s.push_str(&format!("{w:08X}"));
            }
            ("/proc/net/udp6", format!("{s}:{:04X}", addr.port()))
        }
    };
    let text = std::fs::read_to_string(file).ok()?;
    parse_drops(&text, &want)
}

fn parse_drops(text: &str, local: &str) -> Option<u64> {
    text.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&local))
            .then(|| cols.last()?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_drops_column_of_the_socket() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                    1234: 3E00007F:142A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 91 2 0000000000000000 26033\n\
                    1235: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 92 2 0000000000000000 0\n";
        assert_eq!(parse_drops(text, "3E00007F:142A"), Some(26033));
        assert_eq!(parse_drops(text, "0100007F:0035"), Some(0));
        assert_eq!(parse_drops(text, "0100007F:0036"), None);
        let addr: SocketAddr = "127.0.0.62:5162".parse().expect("literal");
        let want = format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes([127, 0, 0, 62]),
            addr.port()
        );
        assert_eq!(want, "3E00007F:142A");
    }

    #[test]
    fn reads_a_real_socket() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = sock.local_addr().expect("addr");
        assert_eq!(udp_drops(addr), Some(0));
    }
}
