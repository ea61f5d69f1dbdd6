//! SERVICE_SPEC.md is generated from the code and kept in step with it.

#[test]
fn service_spec_is_current() {
    let r =
        service_kit::service::check_spec_file::<tiny_agents::Config>(env!("CARGO_MANIFEST_DIR"));
    assert!(r.is_ok(), "{}", r.err().unwrap_or_default());
}
