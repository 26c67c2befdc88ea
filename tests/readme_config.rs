//! The complete example configuration in the README (DKIM keys, two egress pools and a
//! warm-up schedule) is a configuration `serve` accepts: it parses, and its egress part passes
//! every check `serve` makes at start once its documentation addresses are replaced by
//! loopback ones this host has.

#[test]
fn the_readme_example_config_parses_and_its_egress_checks_out() {
    let readme = include_str!("../README.md");
    let (_, after) = readme.split_once("<!-- readme-config -->\n```toml\n").expect("the marked block in README.md");
    let (block, _) = after.split_once("\n```").unwrap();
    let cfg = mxpipe::config::Config::from_toml_str(block).unwrap_or_else(|e| panic!("README example: {e}"));
    assert_eq!(cfg.dkim.len(), 2);
    assert!(cfg.dkim.iter().any(|k| k.always && k.name.as_deref() == Some("esp")));
    assert_eq!(cfg.egress.pool.len(), 2);
    assert_eq!(cfg.egress.warmup.len(), 1);
    assert_eq!(cfg.egress.warmup[0].classes.len(), 3);
    let local = block.replace("192.0.2.", "127.0.2.");
    let cfg = mxpipe::config::Config::from_toml_str(&local).unwrap();
    let egress = mxpipe::egress::Egress::new(&cfg.egress).unwrap_or_else(|e| panic!("README example's [egress]: {e}"));
    assert!(egress.has_pool("bulk") && egress.has_pool("transactional") && !egress.has_pool("nope"));
}
