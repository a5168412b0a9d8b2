//! Selectors: kubectl's syntax, its meaning, and the errors that name what is wrong.

use super::*;

fn labels(text: &str) -> BTreeMap<String, String> {
    crate::labels::parse(text).expect("labels")
}

#[test]
fn equality_and_set_requirements_mean_what_kubernetes_means() {
    let berlin_gpu = labels("site=berlin,gpu=a100,tier=edge");
    let oslo = labels("site=oslo");
    let cases = [
        ("site=berlin", true, false),
        ("site==berlin", true, false),
        ("site!=berlin", false, true),
        ("site in (berlin, paris)", true, false),
        ("site notin (berlin,paris)", false, true),
        ("gpu", true, false),
        ("!gpu", false, true),
        ("tier=edge,!gpu", false, false),
        ("site in (berlin,oslo),tier!=cloud", true, true),
        ("", true, true),
    ];
    for (text, on_berlin, on_oslo) in cases {
        let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(selector.matches(&berlin_gpu), on_berlin, "{text} on berlin");
        assert_eq!(selector.matches(&oslo), on_oslo, "{text} on oslo");
        let again = Selector::parse(&selector.to_string()).expect("its own form parses");
        assert_eq!(again, selector, "{text} round-trips as `{selector}`");
    }
}

#[test]
fn malformed_selectors_say_what_is_wrong() {
    for (text, reason) in [
        ("site in (berlin", "without its `)`"),
        ("site in berlin", "is not a set"),
        ("site ~ berlin", "no operator"),
        ("=berlin", "not a label key"),
        ("site=ber lin", "not a label value"),
        ("site=a,,tier=b", "empty requirement"),
        ("site in ()", "empty set"),
    ] {
        let error = Selector::parse(text).expect_err(text);
        assert!(error.to_string().contains(reason), "{text}: {error}");
        assert!(
            error.to_string().contains("k in (a,b)"),
            "lists the forms: {error}"
        );
    }
}

#[test]
fn match_labels_require_each_value() {
    let selector = Selector::from_labels(&labels("site=berlin,tier=edge"));
    assert!(selector.matches(&labels("site=berlin,tier=edge,gpu=yes")));
    assert!(!selector.matches(&labels("site=berlin")));
    assert_eq!(selector.to_string(), "site=berlin,tier=edge");
}
