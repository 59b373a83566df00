use super::*;

#[test]
fn server_labels_are_bounded_to_known_services_and_methods() {
    let known = chat_proto::filter_service_server::SERVICE_NAME;
    assert_eq!(
        server_labels(known, "Filter", tonic::Code::Ok),
        (known.to_owned(), "Filter".to_owned())
    );
    assert_eq!(
        server_labels(known, "Made1Up", tonic::Code::Unimplemented),
        (known.to_owned(), OTHER.to_owned())
    );
    assert_eq!(
        server_labels("evil.Service123", "Anything", tonic::Code::Unimplemented),
        (OTHER.to_owned(), OTHER.to_owned())
    );
    let (service, method) = service_and_method("/chat.v1.TokenService/Reserve");
    assert_eq!(
        (service.as_str(), method.as_str()),
        ("chat.v1.TokenService", "Reserve")
    );
}
