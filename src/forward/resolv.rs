//! Default upstreams from `/etc/resolv.conf`.

use std::net::SocketAddr;
use std::path::Path;

/// Larger than any real resolv.conf (glibc reads at most a few kilobytes of it).
const MAX_RESOLV_CONF_BYTES: u64 = 64 * 1024;

/// Nameservers of a resolv.conf file, on port 53. Read through [`crate::bounded`], so a FIFO or
/// device given as `--resolv-conf` is refused at once instead of hanging start-up. `/dev/null`,
/// the usual way to say "no system resolver", reads as an empty file.
pub fn system_upstreams(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    if path == Path::new("/dev/null") {
        return Ok(Vec::new());
    }
    let text = crate::bounded::read_text(path, MAX_RESOLV_CONF_BYTES)?;
    let conf = resolv_conf::Config::parse(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(conf
        .nameservers
        .into_iter()
        .map(|ip| SocketAddr::new(ip.into(), 53))
        .collect())
}

/// Drops upstreams that are this server itself, which would forward every query in a loop.
pub fn without_self(upstreams: Vec<SocketAddr>, listen: &[SocketAddr]) -> Vec<SocketAddr> {
    let is_self = |up: &SocketAddr| {
        listen.iter().any(|l| {
            let same_ip = up.ip() == l.ip() || (l.ip().is_unspecified() && up.ip().is_loopback());
            up.port() == l.port() && same_ip
        })
    };
    upstreams.into_iter().filter(|up| !is_self(up)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameservers_and_skips_self() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "search svc.cluster.local\nnameserver 10.96.0.10\nnameserver 127.0.0.1\noptions ndots:5\n").unwrap();
        let ups = system_upstreams(&path).unwrap();
        assert!(system_upstreams(Path::new("/dev/null")).unwrap().is_empty());
        let fifo = dir.path().join("fifo");
        crate::bounded::mkfifo(&fifo);
        let err = system_upstreams(&fifo).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        assert_eq!(
            ups,
            vec![
                "10.96.0.10:53".parse().unwrap(),
                "127.0.0.1:53".parse().unwrap()
            ]
        );
        assert_eq!(
            without_self(ups.clone(), &["0.0.0.0:53".parse().unwrap()]),
            vec![ups[0]]
        );
        assert_eq!(
            without_self(ups.clone(), &["127.0.0.1:5353".parse().unwrap()]),
            ups
        );
        let dual_stack = ["[::]:53".parse().unwrap(), "0.0.0.0:53".parse().unwrap()];
        assert_eq!(without_self(ups.clone(), &dual_stack), vec![ups[0]]);
    }
}
