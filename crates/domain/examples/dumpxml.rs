//! Parses a domain XML file and prints the warnings (stderr) and dumpxml (stdout):
//! `cargo run -p vireo-domain --example dumpxml -- FILE.xml`.

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: dumpxml FILE.xml");
        std::process::exit(2);
    };
    let xml = match std::fs::read_to_string(&path) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            std::process::exit(1);
        }
    };
    match vireo_domain::Domain::from_xml(&xml) {
        Ok(p) => {
            for w in &p.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", p.domain.to_xml());
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
