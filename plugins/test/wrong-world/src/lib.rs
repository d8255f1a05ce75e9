//! `wrong-world`: exports `projector:plugin/projection@0.9.0` with another shape, so a host
//! implementing `@0.1.0` must refuse it with a clear reason.

wit_bindgen::generate!({
    path: "wit",
    world: "plugin",
});

struct WrongWorld;

impl exports::projector::plugin::projection::Guest for WrongWorld {
    fn handle(events: Vec<String>) -> Vec<String> {
        events
    }
}

export!(WrongWorld);
