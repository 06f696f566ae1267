//! Skiff's control plane (API server, scheduler, controllers). Filled in by the control-plane work.
