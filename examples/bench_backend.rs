//! A minimal HTTP/1.1 backend for `bench/pipeline.sh`: answers every request with a fixed
//! 2-byte body, on hyper over smol, one thread. Usage: `bench_backend 127.0.0.1:18080`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use smol_hyper::rt::FuturesIo;

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18080".into());
    let ex = smol::LocalExecutor::new();
    smol::block_on(ex.run(async {
        let listener = smol::net::TcpListener::bind(addr.as_str()).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            ex.spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(FuturesIo::new(stream), svc)
                    .await;
            })
            .detach();
        }
    }))
}
