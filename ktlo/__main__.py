from ktlo.cli import main

main()
