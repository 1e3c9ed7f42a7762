from pgq.cli import main

main()
