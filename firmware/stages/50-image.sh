# Stage 50: the card image, its block map and checksum (firmware/assemble-image).
"$FIRMWARE/assemble-image" --boot "$WORK/boot" --root "$WORK/rootfs" --data "$WORK/data" \
    --out "$IMAGE"
sfdisk -d "$IMAGE" >&2
