use axum::http::Method;

use super::*;

#[test]
fn routes_are_limited_unless_exempt_and_model_routes_are_stricter() {
    let (get, post) = (&Method::GET, &Method::POST);
    assert_eq!(class_of(post, "/chat"), Some(Class::Model));
    assert_eq!(class_of(post, "/v1/chat/completions"), Some(Class::Model));
    assert_eq!(class_of(get, "/history"), Some(Class::Read));
    assert_eq!(class_of(get, "/v1/models"), Some(Class::Read));
    assert_eq!(class_of(get, "/conversations"), Some(Class::Read));
    assert_eq!(
        class_of(get, "/conversations/{conversation_id}/messages"),
        Some(Class::Read)
    );
    assert_eq!(class_of(post, "/auth/login"), Some(Class::Login));
    assert_eq!(class_of(get, "/health"), None);
    assert_eq!(class_of(get, "/admin/users/{user_id}"), None);
}

#[test]
fn a_zero_rate_is_off_and_a_zero_burst_is_a_minute() {
    assert_eq!(Rate::new(0, 5), None);
    let rate = Rate::new(3, 0);
    assert_eq!(rate.map(|rate| rate.burst.get()), Some(3));
    assert_eq!(rate.map(Rate::interval_micros), Some(20_000_000));
}
