"""Operations: metrics, the HTTP endpoint, logs."""
