"""What the unit keeps on its SD card: the durable outbox, its repair after damage, the
seq high-water mark, and the one way a small file is written durably."""
