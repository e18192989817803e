"""Networks: the RDT-style transformer, encoders, noise schedules and samplers."""
