//! What the load generator's binaries share: reading a process's CPU
//! time and memory from `/proc`, so every benchmark prints CPU per message
//! and RSS the same way, and the bare server the daemon's webhook path is
//! compared with.

pub mod bare {
    //! The ceiling of the API benchmarks: an HTTP/1.1 server on the same
    //! stack as the daemon (tokio, hyper, keep-alive, `TCP_NODELAY`) that
    //! reads each request's body and answers `200` with nothing else to do.
    //! The same load against it and against the daemon, in one run, tells
    //! how much of the daemon's CPU per message is the HTTP round trip
    //! itself and how much is the daemon's own work.

    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    /// Answers one request: the body read to its end, then `200`. A body
    /// that fails mid-way is answered `400`, as the daemon would.
    async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let status = match request.into_body().collect().await {
            Ok(_) => http::StatusCode::OK,
            Err(_) => http::StatusCode::BAD_REQUEST,
        };
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        Ok(response)
    }

    /// Serves `listener` until the process ends, one task per connection.
    pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
        let builder = {
            let mut builder = http1::Builder::new();
            builder.keep_alive(true);
            builder
        };
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service_fn(answer));
            tokio::spawn(async move {
                // A client closing its connection is the end of a run.
                let _ = connection.await;
            });
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn reads_the_body_and_answers_200_on_a_kept_alive_connection() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve(listener));
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            for body in ["", "{\"text\":\"hello\"}"] {
                sender.ready().await.unwrap();
                let request = Request::post(format!("http://{addr}/webhooks/any"))
                    .header("host", addr.to_string())
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), http::StatusCode::OK);
                let answered = response.into_body().collect().await.unwrap().to_bytes();
                assert!(answered.is_empty());
            }
        }
    }
}

pub mod proc {
    //! `/proc` readers (Linux). Parsing is separate from reading, so it is
    //! tested on recorded lines.

    /// Resident memory (KiB) of `pid`.
    pub fn vm_rss_kib(pid: u32) -> Option<u64> {
        parse_vm_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }

    /// User + system CPU ticks (1/100 s) of `pid` (`"self"` works too).
    pub fn cpu_ticks(pid: &str) -> Option<u64> {
        parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// User + system CPU ticks of each of `pid`'s threads, summed by thread
    /// name (the kernel's 15-byte `comm`), so a report can say which of the
    /// daemon's threads (runtime workers, a store's SQLite thread, the log
    /// writer) took the time.
    pub fn thread_ticks(pid: u32) -> Option<std::collections::BTreeMap<String, u64>> {
        let mut by_name = std::collections::BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let Ok(task) = task else { continue };
            // A thread may end between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let (Some(name), Some(ticks)) = (parse_stat_name(&stat), parse_stat_ticks(&stat)) {
                *by_name.entry(name.to_owned()).or_default() += ticks;
            }
        }
        Some(by_name)
    }

    /// The command (thread) name of a `/proc/<pid>/stat` line.
    pub fn parse_stat_name(stat: &str) -> Option<&str> {
        stat.get(stat.find('(')? + 1..stat.rfind(')')?)
    }

    /// Busy ticks of the whole machine.
    pub fn busy_ticks() -> Option<u64> {
        parse_busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Resident memory (KiB) from a `/proc/<pid>/status` text.
    pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.get("VmRSS:".len()..)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// User + system CPU ticks (1/100 s) from a `/proc/<pid>/stat` line.
    pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
        // The command name, in parentheses, may hold spaces and parentheses.
        let rest = stat.get(stat.rfind(')')? + 1..)?;
        let mut fields = rest.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(utime + stime)
    }

    /// Busy ticks of all CPUs (everything but idle and iowait) from the first
    /// line of `/proc/stat`.
    pub fn parse_busy_ticks(stat: &str) -> Option<u64> {
        let line = stat.lines().next()?;
        let n: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        Some([0, 1, 2, 5, 6, 7].iter().filter_map(|i| n.get(*i)).sum())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_vm_rss_from_a_status_file() {
            let status =
                "Name:\tomnid\nVmPeak:\t  900000 kB\nVmRSS:\t   51234 kB\nRssAnon:\t   40000 kB\n";
            assert_eq!(parse_vm_rss_kib(status), Some(51234));
            assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
            assert_eq!(parse_vm_rss_kib("VmRSS:\tlots kB\n"), None);
        }

        #[test]
        fn reads_cpu_ticks_past_a_command_name_with_spaces() {
            let line =
                "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 96 0 0 20 0 5 0";
            assert_eq!(parse_stat_ticks(line), Some(731 + 96));
            assert_eq!(parse_stat_name(line), Some("tokio (rt) 1"));
            assert_eq!(parse_stat_name("4242 cut S 1"), None);
            assert_eq!(parse_stat_ticks("4242 (cut) S 1"), None);
            assert_eq!(parse_stat_ticks("garbage"), None);
            let machine = "cpu  100 5 20 9000 40 1 2 3 0 0\ncpu0 1 2 3\n";
            assert_eq!(parse_busy_ticks(machine), Some(100 + 5 + 20 + 1 + 2 + 3));
        }
    }
}
