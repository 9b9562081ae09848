"""The township broker's identities: CA, station certificates and bundles, revocation,
centre accounts and the ACL (`pingan-centre broker …`)."""
