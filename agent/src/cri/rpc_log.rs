//! One debug line per RPC with its name, duration and gRPC status.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The tower layer adding [`RpcLog`] around the CRI router.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcLogLayer;

impl<S> tower::Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;
    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog { inner }
    }
}

/// Logs each request when its response headers are ready.
#[derive(Clone, Debug)]
pub struct RpcLog<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // "/runtime.v1.RuntimeService/Version" -> "Version"
        let rpc = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let start = Instant::now();
        crate::memory::note_activity();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            crate::memory::note_activity();
            let took = start.elapsed();
            let micros = took.as_micros() as u64;
            match &result {
                Ok(resp) => {
                    // Errors come "trailers-only", with grpc-status in the headers; a
                    // success carries it in the trailers, after this point.
                    let headers = resp.headers();
                    match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
                        None | Some("0") => {
                            crate::telemetry::get().rpc(&rpc, "Ok", took);
                            tracing::debug!(rpc = %rpc, micros, status = "OK", "rpc")
                        }
                        Some(code) => {
                            let code = tonic::Code::from_i32(code.parse().unwrap_or(2));
                            crate::telemetry::get().rpc(&rpc, &format!("{code:?}"), took);
                            let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
                            tracing::debug!(rpc = %rpc, micros, status = ?code, message, "rpc")
                        }
                    }
                }
                Err(e) => {
                    crate::telemetry::get().rpc(&rpc, "Transport", took);
                    tracing::debug!(rpc = %rpc, micros, error = %e, "rpc failed")
                }
            }
            result
        })
    }
}
