//! `flo-devserver`: the dev control plane. Everything lives in the
//! `flo_devserver` library; this is only the process entry point.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(flo_devserver::main(&args));
}
