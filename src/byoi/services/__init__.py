"""Services: every rule and state transition, one module per resource. They never know HTTP."""
