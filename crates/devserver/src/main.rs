//! `flo-devserver`: the dev control plane. Everything lives in the
//! `flo_devserver` library; this is only the process entry point.

fn main() {
    std::process::exit(flo_devserver::main(std::env::args_os().skip(1)));
}
