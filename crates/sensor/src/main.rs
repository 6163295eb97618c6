fn main() {
    println!("picket-sensor: not built yet");
}
