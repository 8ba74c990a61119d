//! `warren`: one binary for operators and users (README.md, `docs/api.md`).
//! Everything is in the library ([`warren::cli`]).
fn main() {
    warren::cli::main()
}
