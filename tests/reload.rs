//! Hot reload of the zones directory, and broken manifests next to good ones.

mod support;

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::*;

const WITHIN: Duration = Duration::from_secs(5);

fn entry(host: &str, address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: x, namespace: ns}}\nspec:\n  hosts: [{host}]\n  addresses: [{address}]\n"
    )
}

fn is_nxdomain(server: &GlobalDns, name: &str) -> bool {
    query(server.addr, name, RecordType::A, Proto::Udp)
        .metadata
        .response_code
        == ResponseCode::NXDomain
}

#[test]
fn added_changed_and_removed_files_show_within_seconds() {
    let zones = zones_copy();
    let server = GlobalDns::start(zones.path(), &["--rescan-interval", "60"]);
    assert!(is_nxdomain(&server, "productpage.default.global."));

    let file = zones.path().join("productpage.yaml");
    std::fs::write(&file, entry("productpage.default.global", "240.0.0.20")).unwrap();
    assert!(
        eventually(WITHIN, || resolves_to(
            &server,
            "productpage.default.global.",
            "240.0.0.20"
        )),
        "add"
    );

    std::fs::write(&file, entry("productpage.default.global", "240.0.0.21")).unwrap();
    assert!(
        eventually(WITHIN, || resolves_to(
            &server,
            "productpage.default.global.",
            "240.0.0.21"
        )),
        "change"
    );

    std::fs::remove_file(&file).unwrap();
    assert!(
        eventually(WITHIN, || is_nxdomain(
            &server,
            "productpage.default.global."
        )),
        "remove"
    );
    assert!(resolves_to(&server, "reviews.default.global.", "240.0.0.3"));
}

#[test]
fn nested_directories_are_watched_too() {
    let zones = zones_copy();
    let server = GlobalDns::start(zones.path(), &["--rescan-interval", "60"]);
    std::fs::create_dir_all(zones.path().join("team-a/prod")).unwrap();
    std::fs::write(
        zones.path().join("team-a/prod/svc.yml"),
        entry("svc.team-a.global", "240.0.0.30"),
    )
    .unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "svc.team-a.global.",
        "240.0.0.30"
    )));
}

#[test]
fn broken_manifest_is_skipped_and_named_in_the_log() {
    let zones = zones_copy();
    let broken = zones.path().join("broken.yaml");
    std::fs::write(&broken, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b}\nspec:\n  hosts: [broken.global]\n  addresses: [240.0.0.40\n").unwrap();
    let bad_address = zones.path().join("bad-address.yaml");
    std::fs::write(&bad_address, entry("bad.global", "not-an-address")).unwrap();
    let server = GlobalDns::start(zones.path(), &[]);

    assert!(resolves_to(&server, "reviews.default.global.", "240.0.0.3"));
    assert!(is_nxdomain(&server, "broken.global."));
    assert!(is_nxdomain(&server, "bad.global."));
    let log = server.log_text();
    assert!(
        log.contains("broken.yaml") && log.contains("skipping manifest"),
        "{log}"
    );
    assert!(
        log.contains("bad-address.yaml") && log.contains("not-an-address"),
        "{log}"
    );

    // Fixing the file brings its names in; the server never stopped serving.
    std::fs::write(&broken, entry("broken.global", "240.0.0.40")).unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "broken.global.",
        "240.0.0.40"
    )));
}

#[test]
fn periodic_rescan_catches_changes_without_events() {
    // The zones directory is created after start, so there is nothing to watch at first.
    let parent = tempfile::tempdir().unwrap();
    let zones = parent.path().join("later");
    let server = GlobalDns::start(&zones, &["--rescan-interval", "1"]);
    assert!(is_nxdomain(&server, "late.global."));
    std::fs::create_dir(&zones).unwrap();
    std::fs::write(zones.join("late.yaml"), entry("late.global", "240.0.0.50")).unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "late.global.",
        "240.0.0.50"
    )));
}
