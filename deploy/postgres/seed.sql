-- The compose stack's catalogue to start with: the SKUs dev-materiels has built in
-- (state/src/catalogue.rs), active, 500 in stock each. Runs after catalogue.sql (file names in
-- order). Change them with SQL: dev-materiels follows (docs/integration.md).
INSERT INTO catalogue (sku, description, active, stock) VALUES
    ('BRAKE-PAD-UIC', 'Brake Pad Uic', true, 500),
    ('BRAKE-DISC-640', 'Brake Disc 640', true, 500),
    ('WHEELSET-BA004', 'Wheelset Ba004', true, 500),
    ('AXLE-BOX-BEARING', 'Axle Box Bearing', true, 500),
    ('BOGIE-SPRING-Y32', 'Bogie Spring Y32', true, 500),
    ('COUPLER-UIC-520', 'Coupler Uic 520', true, 500),
    ('BUFFER-105MM', 'Buffer 105Mm', true, 500),
    ('PANTOGRAPH-STRIP', 'Pantograph Strip', true, 500),
    ('DOOR-SEAL-1800', 'Door Seal 1800', true, 500),
    ('WINDOW-PANE-LAM', 'Window Pane Lam', true, 500),
    ('BERTH-MATTRESS-80', 'Berth Mattress 80', true, 500),
    ('BERTH-LADDER', 'Berth Ladder', true, 500),
    ('LINEN-SET-SINGLE', 'Linen Set Single', true, 500),
    ('LINEN-SET-DOUBLE', 'Linen Set Double', true, 500),
    ('WASHBASIN-TAP', 'Washbasin Tap', true, 500),
    ('WC-VACUUM-VALVE', 'Wc Vacuum Valve', true, 500),
    ('HVAC-FILTER-G4', 'Hvac Filter G4', true, 500),
    ('LED-READING-LAMP', 'Led Reading Lamp', true, 500),
    ('BATTERY-110V-NICD', 'Battery 110V Nicd', true, 500),
    ('FIRE-EXTINGUISHER-6L', 'Fire Extinguisher 6L', true, 500)
ON CONFLICT (sku) DO NOTHING;
