//! Mutated corpus files: the parser never panics, and whatever it accepts round-trips
//! through dumpxml. Deterministic (fixed seed), a few thousand cases.

use std::path::PathBuf;

use vireo_domain::Domain;

const ITER: usize = 600;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const PIECES: &[&str] = &[
    "<",
    ">",
    "/",
    "'",
    "\"",
    "&",
    "&amp;",
    "=",
    " ",
    "\n",
    "0",
    "9",
    "-",
    "x",
    "<a/>",
    "</a>",
    "unit='EiB'",
    "unit='b'",
    "<boot order='1'/>",
    "<devices>",
    "</devices>",
    "é",
    "\u{1F600}",
    "<![CDATA[x]]>",
    "<!-- c -->",
    "xmlns:q='urn:q'",
    "<q:x/>",
];

fn mutate(rng: &mut Rng, s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = chars.clone();
    for _ in 0..1 + rng.below(3) {
        let len = out.len();
        let at = rng.below(len);
        match rng.below(4) {
            0 => {
                let n = 1 + rng.below(20);
                out.drain(at..(at + n).min(len));
            }
            1 => {
                let n = 1 + rng.below(40);
                let piece: Vec<char> = out[at..(at + n).min(len)].to_vec();
                let to = rng.below(out.len());
                out.splice(to..to, piece);
            }
            2 => {
                let p = PIECES[rng.below(PIECES.len())];
                out.splice(at..at, p.chars());
            }
            _ => {
                if at < len {
                    out[at] = PIECES[rng.below(PIECES.len())].chars().next().unwrap();
                }
            }
        }
    }
    out.into_iter().collect()
}

#[test]
fn mutated_corpus_never_panics_and_accepted_input_round_trips() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut accepted, mut refused) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let xml = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for _ in 0..ITER {
            let m = mutate(&mut rng, &xml);
            match Domain::from_xml(&m) {
                Ok(p) => {
                    accepted += 1;
                    let out = p.domain.to_xml();
                    let again = Domain::from_xml(&out).unwrap_or_else(|e| {
                        panic!("dumpxml not accepted: {e}\ninput:\n{m}\noutput:\n{out}")
                    });
                    assert_eq!(
                        again.domain, p.domain,
                        "round trip differs\ninput:\n{m}\noutput:\n{out}"
                    );
                }
                Err(e) => {
                    refused += 1;
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
            }
        }
    }
    // Both paths are exercised.
    assert!(
        accepted > 100 && refused > 100,
        "accepted {accepted}, refused {refused}"
    );
}
