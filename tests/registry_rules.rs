//! The configuration registry through exitd's library and the real `exitd config` binary:
//! the seed's radio/ESSID example translated into Parker items, a Ljubljana-style project
//! override, forbidden combinations, edge-triggered re-evaluation, conflicts and cycles,
//! `exitd config explain` and `exitd config check`.

use exitd::{
    config::Config,
    parker::{
        BrokerConfig,
        items::{ParkerConcentrator, ParkerNode},
    },
    registry::{Resolution, Resolver, SubjectKind, SubjectState, standard},
};
use std::process::Command;

const EXITD: &str = env!("CARGO_BIN_EXE_exitd");
/// A node in the default project with two tunnels (the seed's two-radio router).
const TWO: &str = "+Y4ofxTqc5XNPZwc41lMa5u2fraICdLL3XVbT+PkZ5E=";
/// A Ljubljana node with two tunnels.
const LJ: &str = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=";
/// A node whose hardware runs no tunnel.
const NONE: &str = "OmaOePJh+hrEZETlPEdNWj7qZn7GTbCno678kH0uLHs=";

/// The seed's rules: `changed(supported_radios)` clears the radios, ≥ 1 / ≥ 2 radios append
/// one each, project Ljubljana overrides the ESSIDs. Here: tunnels → concentrator PoPs.
const SEED_RULES: &str = r#"
[[registry.rules]]
name = "tunnels-changed"
when = "changed(general#tunnels)"
do = [{ clear = "parker.concentrator" }]

[[registry.rules]]
name = "first-tunnel"
when = "general#tunnels >= 1"
do = [{ append = "parker.concentrator", set = { pop = "vie01" } }]

[[registry.rules]]
name = "second-tunnel"
when = "general#tunnels >= 2"
do = [{ append = "parker.concentrator", set = { pop = "muc01" } }]

[[registry.rules]]
name = "ljubljana"
when = "general#project == 'ljubljana'"
override = true
do = [{ assign = "parker.node", set = { wg_keepalive = 15 } }]

[[registry.rules.rules]]
name = "first"
when = "general#tunnels >= 1"
do = [{ assign = "parker.concentrator", index = 0, set = { pop = "lju01" } }]

[[registry.rules.rules]]
name = "second"
when = "general#tunnels >= 2"
do = [{ assign = "parker.concentrator", index = 1, set = { pop = "lju02" } }]
"#;

fn nodes(lj_tunnels: u32) -> String {
    format!(
        "[registry.global]\ngeneral = {{ project = \"wlan-si\" }}\n\
         [registry.nodes.\"{TWO}\"]\ngeneral = {{ tunnels = 2 }}\n\
         [registry.nodes.\"{LJ}\"]\ngeneral = {{ project = \"ljubljana\", tunnels = {lj_tunnels} }}\n\
         [registry.nodes.\"{NONE}\"]\ngeneral = {{ tunnels = 0 }}\n"
    )
}

fn resolver(text: &str) -> Resolver {
    let config = Config::parse(text, "test").expect("file parses");
    Resolver::new(standard(), config.registry.unwrap_or_default()).expect("registry compiles")
}

fn resolve(text: &str, node: &str, prev: Option<&SubjectState>) -> anyhow::Result<Resolution> {
    let base = exitd::parker::items::base(&BrokerConfig::with_defaults());
    resolver(text).resolve(SubjectKind::Node, node, &base, prev)
}

fn pops(r: &Resolution) -> Vec<String> {
    r.list::<ParkerConcentrator>()
        .into_iter()
        .map(|c| c.pop)
        .collect()
}

fn origin(r: &Resolution, loc: &str) -> String {
    r.slot(loc)
        .map(|s| s.origin.to_string())
        .unwrap_or_else(|| panic!("{loc} is resolved"))
}

#[test]
fn seed_radio_example_as_concentrator_pops() {
    let text = format!("{}{SEED_RULES}", nodes(2));
    let two = resolve(&text, TWO, None).expect("resolves");
    assert_eq!(pops(&two), ["vie01", "muc01"]);
    assert_eq!(
        origin(&two, "parker.concentrator[0]#pop"),
        "rule first-tunnel"
    );
    assert_eq!(
        origin(&two, "parker.concentrator[1]#pop"),
        "rule second-tunnel"
    );
    assert_eq!(two.fired, ["first-tunnel", "second-tunnel"]);

    let none = resolve(&text, NONE, None).expect("resolves");
    assert!(
        pops(&none).is_empty(),
        "no tunnel, no PoP: {:?}",
        pops(&none)
    );

    let lj = resolve(&text, LJ, None).expect("resolves");
    assert_eq!(pops(&lj), ["lju01", "lju02"]);
    assert_eq!(
        origin(&lj, "parker.concentrator[1]#pop"),
        "rule ljubljana/second"
    );
    assert_eq!(lj.get::<ParkerNode>().expect("item").wg_keepalive, 15);

    let unlisted = resolve(&text, "", None).expect("resolves");
    assert_eq!(
        pops(&unlisted),
        ["vie01"],
        "general.tunnels defaults to 1 for unlisted nodes"
    );
}

#[test]
fn ljubljana_project_layer_overrides_global_and_node_beats_project() {
    let text = format!(
        "{}\n[registry.projects.ljubljana]\n\"parker.node\" = {{ retry = 60, mtu = 1400 }}\n\
         [registry.node_types.outdoor]\n\"parker.node\" = {{ mtu = 1300 }}\n\
         [registry.nodes.\"{LJ}\".\"parker.node\"]\nretry = 30\n",
        nodes(1).replace("tunnels = 1 }", "tunnels = 1, node_type = \"outdoor\" }")
    );
    let lj = resolve(&text, LJ, None).expect("resolves");
    let node = lj.get::<ParkerNode>().expect("item");
    assert_eq!((node.retry, node.mtu, node.wg_keepalive), (30, 1300, 25));
    assert_eq!(origin(&lj, "parker.node#retry"), format!("layer node {LJ}"));
    assert_eq!(origin(&lj, "parker.node#mtu"), "layer node_type outdoor");
    assert_eq!(
        origin(&lj, "parker.node#wg_keepalive"),
        "[parker] wg_keepalive"
    );
    assert_eq!(
        lj.layers,
        [
            "global".to_string(),
            "project ljubljana".into(),
            "node_type outdoor".into(),
            format!("node {LJ}")
        ]
    );
    let other = resolve(&text, TWO, None).expect("resolves");
    let node = other.get::<ParkerNode>().expect("item");
    assert_eq!((node.retry, node.mtu), (120, 1375), "the [parker] values");
}

#[test]
fn forbidden_combination_is_rejected_with_the_rules_message() {
    let text = format!(
        "{}\n[[registry.rules]]\nname = \"three-tunnels-need-more-pops\"\n\
         when = \"general#tunnels >= 2 and general#project == 'ljubljana'\"\n\
         forbid = \"Ljubljana has a single PoP\"\n",
        nodes(2)
    );
    let err = resolve(&text, LJ, None).expect_err("forbidden");
    let text_err = format!("{err:#}");
    assert!(
        text_err.contains("rule three-tunnels-need-more-pops forbids")
            && text_err.contains("Ljubljana has a single PoP")
            && text_err.contains(LJ),
        "{text_err}"
    );
    assert!(resolve(&text, TWO, None).is_ok(), "other nodes are fine");
    let one = text.replace(
        "project = \"ljubljana\", tunnels = 2",
        "project = \"ljubljana\", tunnels = 1",
    );
    assert!(resolve(&one, LJ, None).is_ok(), "one tunnel is allowed");
}

#[test]
fn edge_triggered_reevaluation() {
    // First evaluation: the node's own mtu is kept although the rule's condition holds.
    let rule = "\n[[registry.rules]]\nname = \"lj-mtu\"\nwhen = \"general#project == 'ljubljana'\"\n\
                do = [{ assign = \"parker.node\", set = { mtu = 1300 } }]\n";
    let own = format!("[registry.nodes.\"{LJ}\"]\n\"parker.node\" = {{ mtu = 1400 }}\n");
    let wlan = format!("{own}general = {{ project = \"wlan-si\" }}\n{rule}");
    let lj = format!("{own}general = {{ project = \"ljubljana\" }}\n{rule}");
    let first = resolve(&lj, LJ, None).expect("resolves");
    assert_eq!(first.get::<ParkerNode>().expect("item").mtu, 1400);
    assert!(
        first
            .kept
            .iter()
            .any(|k| k.contains("parker.node#mtu") && k.contains("lj-mtu")),
        "{:?}",
        first.kept
    );
    // Unchanged file, second evaluation: the rule does not fire again.
    let again = resolve(&lj, LJ, Some(first.state())).expect("resolves");
    assert!(again.fired.is_empty(), "{:?}", again.fired);
    // The project changes to Ljubljana on a reload: an edge, so the rule overwrites.
    let before = resolve(&wlan, LJ, None).expect("resolves");
    assert_eq!(before.get::<ParkerNode>().expect("item").mtu, 1400);
    let after = resolve(&lj, LJ, Some(before.state())).expect("resolves");
    assert_eq!(after.fired, ["lj-mtu"]);
    assert_eq!(after.get::<ParkerNode>().expect("item").mtu, 1300);
    assert_eq!(origin(&after, "parker.node#mtu"), "rule lj-mtu");

    // The seed's `changed(supported_radios)`: 1 → 2 tunnels clears and re-appends, and an
    // unchanged reload neither clears nor appends twice.
    let one = format!("{}{SEED_RULES}", nodes(1));
    let two = format!("{}{SEED_RULES}", nodes(2));
    let r1 = resolve(&one, LJ, None).expect("resolves");
    assert_eq!(pops(&r1), ["lju01"]);
    let same = resolve(&one, LJ, Some(r1.state())).expect("resolves");
    assert_eq!(pops(&same), ["lju01"], "no duplicate append");
    assert!(same.fired.is_empty(), "{:?}", same.fired);
    let r2 = resolve(&two, LJ, Some(same.state())).expect("resolves");
    assert_eq!(pops(&r2), ["lju01", "lju02"]);
    assert_eq!(
        r2.fired,
        [
            "tunnels-changed",
            "first-tunnel",
            "second-tunnel",
            "ljubljana/first",
            "ljubljana/second"
        ]
    );
}

#[test]
fn conflicts_and_cycles_are_reported_with_the_rules() {
    let conflict = "[[registry.rules]]\nname = \"a\"\n\
                    do = [{ assign = \"parker.node\", set = { retry = 10 } }]\n\
                    [[registry.rules]]\nname = \"b\"\n\
                    do = [{ assign = \"parker.node\", set = { retry = 20 } }]\n";
    let err = format!("{:#}", resolve(conflict, "", None).expect_err("conflict"));
    assert!(
        err.contains("conflicting assignments to parker.node#retry")
            && err.contains("rule a sets 10")
            && err.contains("rule b sets 20"),
        "{err}"
    );
    let resolved = resolve(
        &conflict.replace("name = \"b\"", "name = \"b\"\noverride = true"),
        "",
        None,
    )
    .expect("override resolves the conflict");
    assert_eq!(resolved.get::<ParkerNode>().expect("item").retry, 20);

    let cycle = "[[registry.rules]]\nname = \"grow\"\nwhen = \"count(parker.concentrator) < 5\"\n\
                 do = [{ append = \"parker.concentrator\", set = { pop = \"vie01\" } }]\n";
    let err = format!("{:#}", resolve(cycle, "", None).expect_err("cycle"));
    assert!(err.contains("cycle") && err.contains("grow"), "{err}");
}

/// `exitd config check FILE`.
fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(EXITD)
        .args(["config", "check"])
        .arg(path)
        .output()
        .expect("run exitd config check")
}

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("exitd.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(exitd_testkit::unique_name(&format!("exitd-{tag}-")));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn explain_prints_each_value_with_its_origin() {
    let dir = temp_dir("explain");
    let path = write(
        &dir,
        &format!("[parker]\nretry_interval = 90\n{}{SEED_RULES}", nodes(2)),
    );
    let out = Command::new(EXITD)
        .args(["config", "explain", LJ, "--config"])
        .arg(&path)
        .output()
        .expect("run exitd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |needle: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(needle))
            .unwrap_or_else(|| panic!("no line {needle:?} in\n{stdout}"))
            .to_string()
    };
    assert!(stdout.starts_with(&format!("node {LJ}\n")), "{stdout}");
    assert!(line("parker.concentrator[0]#pop = \"lju01\"").ends_with("(rule ljubljana/first)"));
    assert!(line("parker.node#retry = 90").ends_with("([parker] retry_interval)"));
    assert!(line("parker.node#wg_keepalive = 15").ends_with("(rule ljubljana)"));
    assert!(line("general#project = \"ljubljana\"").ends_with(&format!("(layer node {LJ})")));
    assert!(line("parker.node#mtu = 1375").ends_with("([parker] max_mtu)"));
    assert!(line("rules fired:").contains("first-tunnel, second-tunnel, ljubljana"));

    let gateway = format!(
        "{}\n[registry.gateways.gw1]\ngeneral = {{ project = \"ljubljana\" }}\n\
         gateway = {{ mtu = 1400 }}\n",
        std::fs::read_to_string(&path).expect("read")
    );
    std::fs::write(&path, gateway).expect("write");
    let out = Command::new(EXITD)
        .args(["config", "explain", "gw1", "--config"])
        .arg(&path)
        .output()
        .expect("run exitd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("gateway gw1\n"), "{stdout}");
    assert!(
        stdout.contains("gateway#mtu = 1400") && stdout.contains("(layer gateway gw1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dataplane.nat = 0 entries") && !stdout.contains("parker."),
        "gateway items only; node rules do not touch a gateway: {stdout}"
    );

    let out = Command::new(EXITD)
        .args(["config", "explain", "gw-nowhere", "--config"])
        .arg(&path)
        .output()
        .expect("run exitd");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a node nor a gateway"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_names_item_field_and_rule() {
    let dir = temp_dir("check");
    let good = format!(
        "{}{SEED_RULES}\n[registry.gateways.gw1]\ndataplane.nat = []\n",
        nodes(2)
    )
    .replace(
        "dataplane.nat = []",
        "\"dataplane.nat\" = [{ protocol = \"udp\", port = 53, to = \"10.1.2.3:53\" }]",
    );
    let path = write(&dir, &good);
    let out = check(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (4 subjects"));

    for (broken, needles) in [
        (
            good.replace("set = { pop = \"muc01\" }", "set = { pop = 7 }"),
            vec![
                "rule \"second-tunnel\"",
                "parker.concentrator, field pop",
                "not a string",
            ],
        ),
        (
            good.replace("set = { wg_keepalive = 15 }", "set = { keepalive = 15 }"),
            vec![
                "rule \"ljubljana\"",
                "parker.node",
                "unknown field \"keepalive\"",
            ],
        ),
        (
            good.replace("to = \"10.1.2.3:53\"", "to = \"nowhere\""),
            vec!["gateway gw1", "item dataplane.nat[0]", "field to"],
        ),
        (
            good.replace("port = 53", "port = 70000"),
            vec![
                "layer gateway gw1",
                "dataplane.nat, field port",
                "above the maximum",
            ],
        ),
        (
            good.replace("set = { pop = \"lju02\" }", "set = { pop = \"zrh01\" }"),
            vec![
                LJ,
                "parker.concentrator[1], field pop",
                "rule ljubljana/second",
            ],
        ),
    ] {
        let text = if broken.contains("zrh01") {
            format!(
                "[parker]\n[[parker.concentrators]]\nname = \"a\"\npop = \"vie01\"\n\
                     [[parker.concentrators]]\nname = \"b\"\npop = \"muc01\"\n\
                     [[parker.concentrators]]\nname = \"c\"\npop = \"lju01\"\n{broken}"
            )
        } else {
            broken
        };
        let path = write(&dir, &text);
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "must fail: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} in {stderr}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
