//! Skiff's object model (Kubernetes-shaped types, validation). Filled in by the control-plane work.
