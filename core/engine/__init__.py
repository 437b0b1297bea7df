"""Request and output types, the step loop, and the offline/serving wrappers around it."""
