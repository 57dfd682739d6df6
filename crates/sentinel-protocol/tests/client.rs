//! The client against two minimal servers on real sockets: one that speaks
//! only §1.1 (a legacy server, which answers the unknown options command with
//! a plain `No`) and one that accepts the error-detail option.

use bytes::Bytes;
use sentinel_protocol::{
    Client, Command, ErrorDetail, FrameReader, Limits, Reason, Request, Response, write_response,
};
use tokio::net::TcpListener;

/// Serves one connection: `Yes [0.5, 0.5]` to analyses, `No` (not_pe) to
/// requests without an executable; options turned on only if `supports_options`.
async fn serve_one(listener: TcpListener, supports_options: bool) {
    let (stream, _) = listener.accept().await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read, Limits::default());
    let mut error_detail = false;
    loop {
        let response = match reader.read_request().await {
            Ok(None) => return,
            Ok(Some(request)) if request.command() == Command::Options => {
                if supports_options {
                    error_detail = true;
                    Response::Yes(vec![1.0])
                } else {
                    Response::No(None)
                }
            }
            Ok(Some(request)) if request.executable().is_some_and(|exe| !exe.is_empty()) => {
                Response::Yes(vec![0.5, 0.5])
            }
            Ok(Some(_)) => Response::failure(ErrorDetail::new(Reason::NotPe).with_message("empty")),
            Err(error) => panic!("unexpected frame error {error}"),
        };
        write_response(&mut write, &response, error_detail).await.unwrap();
    }
}

fn static_request(executable: &'static [u8]) -> Request {
    Request::new(Command::StaticAnalyse, vec![Bytes::from_static(executable)])
}

#[tokio::test]
async fn a_legacy_server_declines_the_option_and_the_connection_stays_usable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_one(listener, false));
    let mut client = Client::connect(address).await.unwrap();
    assert!(!client.enable_error_detail().await.unwrap());
    assert_eq!(client.request(&static_request(b"MZ")).await.unwrap(), Response::Yes(vec![0.5, 0.5]));
    assert_eq!(client.request(&static_request(b"")).await.unwrap(), Response::No(None));
    drop(client);
    server.await.unwrap();
}

#[tokio::test]
async fn after_opting_in_a_no_carries_its_reason() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_one(listener, true));
    let mut client = Client::connect(address).await.unwrap();
    assert!(client.enable_error_detail().await.unwrap());
    let Response::No(Some(detail)) = client.request(&static_request(b"")).await.unwrap() else {
        panic!("expected a detailed No");
    };
    assert_eq!((detail.reason(), detail.message()), (Some(Reason::NotPe), "empty"));
    // Pipelined requests are answered in order.
    client.send(&static_request(b"MZ")).await.unwrap();
    client.send(&static_request(b"")).await.unwrap();
    assert_eq!(client.receive().await.unwrap().verdict(), Some(0.5));
    assert!(matches!(client.receive().await.unwrap(), Response::No(Some(_))));
    drop(client);
    server.await.unwrap();
}
