//! gRPC server metrics named like go-grpc-prometheus, so existing dashboards and alert rules
//! work: `grpc_server_started_total`, `grpc_server_handled_total` and the
//! `grpc_server_handling_seconds` histogram, labelled `grpc_service`, `grpc_method` and (when
//! handled) `grpc_code`.
//!
//! The status of a successful call travels in the HTTP/2 trailers, after the body, so the
//! response body is wrapped and the call is counted when its stream ends: for streaming calls
//! the histogram therefore measures the whole stream, as go-grpc-prometheus does. A call whose
//! body is dropped before its end (client cancelled) counts as `Cancelled`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use tower_layer::Layer;
use tower_service::Service;

#[derive(Debug, Clone, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (service, method) = super::split_path(request.uri().path());
        let labels = CallLabels {
            service: service.to_owned(),
            method: method.to_owned(),
        };
        metrics::counter!("grpc_server_started_total", "grpc_service" => labels.service.clone(), "grpc_method" => labels.method.clone())
            .increment(1);
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    // A trailers-only response (every error status) has grpc-status in its headers.
                    let code_opt = grpc_code(response.headers());
                    let mut call = PendingCall {
                        labels,
                        started,
                        recorded: false,
                    };
                    if let Some(code) = code_opt {
                        call.record(code);
                    }
                    Ok(response.map(|inner| MetricsBody { inner, call }))
                }
                Err(error) => {
                    PendingCall {
                        labels,
                        started,
                        recorded: false,
                    }
                    .record(tonic::Code::Unknown);
                    Err(error)
                }
            }
        })
    }
}

#[derive(Debug)]
struct CallLabels {
    service: String,
    method: String,
}

#[derive(Debug)]
struct PendingCall {
    labels: CallLabels,
    started: Instant,
    recorded: bool,
}

impl PendingCall {
    fn record(&mut self, code: tonic::Code) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        let code = go_code_name(code);
        let (service, method) = (self.labels.service.clone(), self.labels.method.clone());
        metrics::counter!("grpc_server_handled_total", "grpc_service" => service.clone(), "grpc_method" => method.clone(), "grpc_code" => code)
            .increment(1);
        metrics::histogram!("grpc_server_handling_seconds", "grpc_service" => service, "grpc_method" => method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.record(tonic::Code::Cancelled);
    }
}

/// Code names as Go's `codes.Code.String()` spells them, which go-grpc-prometheus dashboards
/// and alert rules match on (`OK`, `Canceled`).
fn go_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

pin_project_lite::pin_project! {
    /// The response body, watched for the trailers that carry the call's status.
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        call: PendingCall,
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    this.call.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.record(tonic::Code::Internal),
            // A body that ends without trailers carrying a status is a broken response.
            Poll::Ready(None) => this.call.record(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
