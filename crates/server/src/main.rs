fn main() {
    println!("picket-server: not built yet");
}
