from audiomamba.cli import main

main()
