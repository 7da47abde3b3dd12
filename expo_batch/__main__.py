from expo_batch.cli import main

main()
