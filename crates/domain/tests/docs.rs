//! docs/domain-xml.md shows the keep/refuse table of the code.

use vireo_domain::classify::{Class, TABLE};

fn table() -> String {
    let mut s = String::from("| element | vireo | what it is / why |\n| --- | --- | --- |\n");
    for (parent, name, class) in TABLE {
        let (verdict, text) = match class {
            Class::Keep(t) => ("kept", t),
            Class::Refuse(t) => ("**refused**", t),
        };
        s.push_str(&format!("| `{parent}/{name}` | {verdict} | {text} |\n"));
    }
    s
}

#[test]
fn docs_table_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/domain-xml.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let t = table();
    assert!(
        doc.contains(&t),
        "docs/domain-xml.md must contain the classification table; paste:\n\n{t}"
    );
}
