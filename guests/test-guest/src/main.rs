//! Prints the path of the built test guest, so that
//! `vireo run --kernel "$(cargo run -q -p vireo-test-guest)"` works.

fn main() {
    println!("{}", vireo_test_guest::PATH);
}
