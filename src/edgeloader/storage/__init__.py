"""What the service keeps on disk: durable files, SQLite databases, private folders."""
