//! Checks this function's configuration at start-up; its request handler arrives with the
//! end-to-end work (issue 3).

fn main() {
    match imagegen_shared::registry::ModelRegistry::from_env() {
        Ok(registry) => println!("model registry ok: {} aliases", registry.aliases().count()),
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(1);
        }
    }
}
